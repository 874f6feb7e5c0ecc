"""The house rules: package imports (import-linter's contracts in pyproject.toml), the shape of models/, the
README as a front door whose links resolve, a docs site that builds strictly, and a settings page that lists
every PETSEG_* variable the code, the image and the manifests use."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings_table import render_page, variable_names

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
README_MAX_LINES = 150
MODELS_MAX_TOP_FILES = 6


def run(*command: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": f"{BIN}:/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"})


def test_the_import_contracts_hold() -> None:
    result = run(BIN / "lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"Contracts: (\d+) kept, 0 broken", result.stdout).group(1) == "3"


def test_models_keeps_few_files_at_its_top_and_a_package_per_concern() -> None:
    top = sorted(p.name for p in (ROOT / "models").glob("*.py"))
    assert len(top) <= MODELS_MAX_TOP_FILES, top
    for package in ("nets", "engine", "imaging"):
        assert (ROOT / "models" / package / "__init__.py").is_file(), package


def test_the_readme_fits_on_a_screen_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://|#|mailto:", link)]
    assert local, "the README links into the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing
    for command in (".venv/bin/petseg-serve", ".venv/bin/python -m pytest -q"):
        assert command in text, command


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, missing anchors and pages left out of the navigation fail the build."""
    result = run(BIN / "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "settings" / "index.html").is_file()


def test_the_settings_page_is_generated_from_the_settings_class() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == render_page(), "run: python -m app.settings_table --write docs/settings.md"
    from app.config import Settings

    for name in Settings.model_fields:
        assert f"| `PETSEG_{name.upper()}` |" in page, name


def petseg_names_in(paths: list[Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in re.findall(r"\bPETSEG_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_petseg_variable_of_the_code_image_and_manifests_is_documented() -> None:
    paths = [ROOT / "Dockerfile", ROOT / "docker-compose.yml", *sorted((ROOT / "deploy").rglob("*.yaml"))]
    for package in ("app", "models", "training", "bench"):
        paths += sorted((ROOT / package).rglob("*.py"))
    used = petseg_names_in(paths)
    assert {"PETSEG_CHECKPOINT", "PETSEG_LOG_LEVEL", "PETSEG_CACHE_DIR"} <= set(used)  # the scan sees them
    undocumented = {name: where for name, where in used.items() if name not in variable_names()}
    assert not undocumented, undocumented


def test_the_api_reference_is_generated_from_the_services_schema() -> None:
    from app.api_reference import render_page as render_api_reference

    page = (ROOT / "docs" / "api-reference.md").read_text()
    assert page == render_api_reference(), "run: python -m app.api_reference --write docs/api-reference.md"
    for endpoint in ("`POST /segment`", "`POST /v1.0/removebg`", "`GET /v1.0/account`", "`GET /ready`"):
        assert f"## {endpoint}" in page, endpoint


def test_the_settings_check_fails_on_a_page_out_of_date(tmp_path: Path) -> None:
    stale = tmp_path / "settings.md"
    stale.write_text(render_page().replace("PETSEG_LOG_LEVEL", "PETSEG_LOGLEVEL"))
    result = run(sys.executable, "-m", "app.settings_table", "--check", stale)
    assert result.returncode == 1 and "out of date" in result.stderr
    assert run(sys.executable, "-m", "app.settings_table", "--check", ROOT / "docs" / "settings.md").returncode == 0


@pytest.mark.parametrize("page", ["getting-started.md", "api.md", "api-reference.md", "testing.md", "cutouts.md", "runtimes.md", "operating.md",
                                  "deployment.md", "training.md", "benchmarks.md", "model-card.md", "layout.md"])
def test_every_page_the_readme_promises_exists_and_is_in_the_navigation(page: str) -> None:
    assert (ROOT / "docs" / page).is_file()
    assert f": {page}" in (ROOT / "mkdocs.yml").read_text()
