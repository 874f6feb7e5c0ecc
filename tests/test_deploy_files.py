"""Dockerfile and compose file: no engine here, so check what can be checked: they parse and agree."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is a test extra")

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_dockerfile_builds_from_a_cuda_pytorch_image() -> None:
    args = dict(a.split("=", 1) for a in instruction("ARG") if "=" in a)
    base = instruction("FROM")[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base


def test_dockerfile_runs_as_non_root_and_checks_readiness() -> None:
    users = instruction("USER")
    assert users and users[-1] not in ("root", "0")
    assert "/ready" in instruction("HEALTHCHECK")[0]


def test_dockerfile_command_serves_on_the_exposed_port_with_a_real_console_script(compose: dict) -> None:
    command = json_list(instruction("CMD")[-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert instruction("EXPOSE") == [port]
    container_ports = [p.split(":")[-1] for p in compose["services"]["petseg"]["ports"]]
    assert port in container_ports


def test_readme_documents_the_image_command_and_compose() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up" in readme
    assert ":8000" in readme


def test_compose_reserves_an_nvidia_gpu(compose: dict) -> None:
    devices = compose["services"]["petseg"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_compose_has_healthcheck_restart_and_checkpoint_volume(compose: dict) -> None:
    service = compose["services"]["petseg"]
    assert "/ready" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] in ("unless-stopped", "always", "on-failure")
    assert any(v.split(":")[1] == "/checkpoints" for v in service["volumes"])


def test_compose_only_sets_settings_the_app_knows(compose: dict) -> None:
    from app.config import Settings

    names = {f"PETSEG_{field.upper()}" for field in Settings.model_fields}
    environment = compose["services"]["petseg"]["environment"]
    assert set(environment) <= names, set(environment) - names


def test_dockerignore_keeps_data_and_environments_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "runs"} <= ignored


def json_list(text: str) -> list[str]:
    import json

    return json.loads(text) if text.startswith("[") else shlex.split(text)
