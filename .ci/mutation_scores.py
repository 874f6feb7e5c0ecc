"""Mutation scores per module from ``mutmut results --all true``: the table for docs/testing.md, and exit 1
when a module that was run falls under the floor.

Mutants listed in .ci/equivalent_mutants.txt (one name per line, then the reason) change no behaviour anyone
could observe (an error message's wording, a copy flag, a bound that never binds): they are left out of the
denominator, and the table says how many. A mutant that no selected test reaches ("no tests") is a line
nothing verifies: it counts against the score like a survivor.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

FLOOR = 0.80
ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\s*(?P<name>\S+?)\.x[_ǁ]\S*__mutmut_\d+: (?P<status>[a-z ]+)$")


def equivalents() -> set[str]:
    path = ROOT / ".ci" / "equivalent_mutants.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def main() -> int:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "mutmut"), "results", "--all", "true"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    skip = equivalents()
    counts: dict[str, Counter[str]] = {}
    for line in out.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        mutant = line.split(":")[0].strip()
        status = "equivalent" if mutant in skip and match["status"] == "survived" else match["status"]
        counts.setdefault(match["name"], Counter())[status] += 1
    print("| module | mutants | killed (timeouts) | survived | untested | equivalent (left out) | score |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    low, unfinished = [], []
    for module, count in sorted(counts.items()):
        killed = count["killed"] + count["timeout"] + count["segfault"]
        judged = killed + count["survived"] + count["no tests"] + count["suspicious"]
        score = f"{killed / judged:.1%}" if judged else "n/a"
        low += [module] if judged and killed / judged < FLOOR else []
        if count["not checked"]:  # a run cut short: the score covers only the mutants it reached
            unfinished.append(module)
            score += f" ({count['not checked']} not run)"
        print(f"| `{module}` | {sum(count.values())} | {killed} ({count['timeout']}) | {count['survived']} | "
              f"{count['no tests']} | {count['equivalent']} | {score} |")
    if low:
        print(f"under {FLOOR:.0%}: {', '.join(low)}", file=sys.stderr)
    if unfinished:
        print(f"not every mutant was run: {', '.join(unfinished)}", file=sys.stderr)
    return 1 if low or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
