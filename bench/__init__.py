"""Speed benchmark (``python -m bench.run``) and HTTP load test (``python -m bench.loadtest``).

Not part of the installed package: run them from the repository root. Results go to ``bench/results/``.
"""
