"""Dockerfile, docker-compose.yml and .dockerignore: static checks that they parse and agree with each other
and with the project (console scripts, settings, port). No Docker engine is needed; the two tests that use
the ``docker`` / ``docker-compose`` CLI skip with a reason when it or an engine is missing."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml (test extra)")

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "petseg"
PORT = "8000"
DOCKERFILE_KEYWORDS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "MAINTAINER",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}


# --------------------------------------------------------------------------------------------- tiny parsers
def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, as the builder sees them: comment lines dropped (also inside a
    continued instruction), backslash-newline continuations joined, blank lines ignored."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (pending and not stripped):
            continue
        if not pending and not stripped:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        line = (pending + raw).strip()
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def command_words(text: str) -> list[str]:
    """Exec form (a JSON list) or shell form."""
    return json.loads(text) if text.lstrip().startswith("[") else shlex.split(text)


def substitute(text: str, variables: dict[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``$VAR`` as Dockerfile ARGs / compose interpolation expand them."""
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        value = variables.get(name, "")
        return value if value else (default or "")
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", repl, text)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def instruction(dockerfile: list[tuple[str, str]], name: str) -> list[str]:
    return [args for keyword, args in dockerfile if keyword == name]


def healthcheck_parts(args: str) -> tuple[dict[str, str], list[str]]:
    """``--opt=value ... CMD command`` -> ({opt: value}, command words)."""
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    form, _, command = rest.partition(" ")
    assert form == "CMD", f"HEALTHCHECK must run a command, got {args!r}"
    return options, command_words(command)


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    assert total > 0, f"not a duration: {duration!r}"
    return total


@pytest.fixture(scope="module")
def compose() -> dict:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict) and "services" in document
    return document


@pytest.fixture(scope="module")
def service(compose: dict) -> dict:
    return compose["services"][SERVICE]


def settings_fields() -> set[str]:
    from app.config import Settings  # an import failure is a failure: the settings are the product

    return set(Settings.model_fields)


def console_scripts() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]["scripts"]
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert section, "pyproject.toml has no [project.scripts]"
    return dict(re.findall(r'^"?([\w.-]+)"?\s*=\s*"([^"]+)"', section.group(1), re.M))


def container_ports(service: dict) -> set[str]:
    """Container side of every ``ports`` entry: short ("8000:8000", "127.0.0.1:8000:8000/tcp") or long."""
    found = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.add(str(entry["target"]))
        else:
            found.add(str(entry).split(":")[-1].split("/")[0])
    return found


# --------------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_has_only_known_instructions(dockerfile: list[tuple[str, str]]) -> None:
    assert dockerfile, "empty Dockerfile"
    unknown = {keyword for keyword, _ in dockerfile} - DOCKERFILE_KEYWORDS
    assert not unknown, f"unknown instructions: {unknown}"
    # Only ARG may come before the first FROM.
    first_from = [keyword for keyword, _ in dockerfile].index("FROM")
    assert all(keyword == "ARG" for keyword, _ in dockerfile[:first_from])


def test_dockerfile_builds_from_an_official_pytorch_cuda_image(dockerfile: list[tuple[str, str]]) -> None:
    args = dict(a.split("=", 1) for a in instruction(dockerfile, "ARG") if "=" in a)
    base = substitute(instruction(dockerfile, "FROM")[-1].split()[0], args)
    tag = r"pytorch/pytorch:(\d+)\.(\d+)\.(\d+)-cuda(\d+\.\d+)-cudnn(\d+)-(runtime|devel)"
    match = re.fullmatch(tag, base)
    assert match, f"base image {base!r} is not a pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-runtime tag"
    assert (int(match.group(1)), int(match.group(2))) >= (2, 4), "pyproject needs torch>=2.4"


def test_dockerfile_environment(dockerfile: list[tuple[str, str]]) -> None:
    env = " ".join(instruction(dockerfile, "ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "PIP_NO_CACHE_DIR=1",
                    "PETSEG_DEVICE=auto"):
        assert setting in env, setting


def test_dockerfile_installs_the_project_keeping_the_base_torch(dockerfile: list[tuple[str, str]]) -> None:
    copied = " ".join(instruction(dockerfile, "COPY"))
    for needed in ("pyproject.toml", "README.md", "models", "training", "app"):
        assert re.search(rf"(^|\s|/){re.escape(needed)}(\s|/|$)", copied), f"{needed} is not copied"
    runs = " ".join(instruction(dockerfile, "RUN"))
    assert re.search(r"pip install [^&;]*\.", runs), "no `pip install .`"
    # The CUDA torch of the base image must stay: no upgrade of satisfied requirements, no other torch index.
    forbidden = r"pip install[^&;]*(--upgrade|-U\b|--force-reinstall|download\.pytorch\.org|\btorch\b)"
    assert not re.search(forbidden, runs)
    # Dependencies are installed before the code is copied, so a code change does not reinstall them.
    keywords = [(k, a) for k, a in dockerfile if k in ("COPY", "RUN")]
    first_code_copy = next(i for i, (k, a) in enumerate(keywords) if k == "COPY" and re.search(r"\bapp\b", a))
    assert any(k == "RUN" and "pip install" in a for k, a in keywords[:first_code_copy])


def test_dockerfile_runs_as_a_created_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    users = instruction(dockerfile, "USER")
    assert users, "no USER: the service would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(instruction(dockerfile, "RUN"))
    assert re.search(rf"(useradd|adduser)\b[^&;]*\b{re.escape(user)}\b", runs) or user.isdigit()
    # Nothing runs as root after the switch.
    last_user = max(i for i, (k, _) in enumerate(dockerfile) if k == "USER")
    assert not any(k == "USER" and a.split(":")[0] in ("root", "0") for k, a in dockerfile[last_user:])


def test_dockerfile_healthcheck_probes_readiness(dockerfile: list[tuple[str, str]]) -> None:
    checks = instruction(dockerfile, "HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK (only the last one counts)"
    options, command = healthcheck_parts(checks[0])
    probe = " ".join(command)
    assert re.search(rf"http://(127\.0\.0\.1|localhost):{PORT}/ready\b", probe), probe
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    assert seconds(options["timeout"]) < seconds(options["interval"])
    assert seconds(options["start-period"]) >= 30, "model load + warm-up need a start period"
    assert int(options["retries"]) >= 1


def test_dockerfile_command_serves_on_the_exposed_port_with_a_real_console_script(
        dockerfile: list[tuple[str, str]], service: dict) -> None:
    command = command_words(instruction(dockerfile, "CMD")[-1])
    assert not instruction(dockerfile, "ENTRYPOINT"), "CMD is expected to be the whole command"
    assert command[0] == "petseg-serve"
    assert command[0] in console_scripts(), "CMD names a console script pyproject.toml does not define"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert port == PORT
    assert [p.split("/")[0] for e in instruction(dockerfile, "EXPOSE") for p in e.split()] == [port]
    assert port in container_ports(service)


# --------------------------------------------------------------------------------------------- compose
def test_compose_service_is_built_from_this_directory(service: dict) -> None:
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert context in (".", "./")
    assert service["image"] == "petseg:latest"


def test_compose_reserves_an_nvidia_gpu(service: dict) -> None:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, devices
    assert all(d.get("count", "all") == "all" or int(d["count"]) >= 1 for d in gpus)


def test_compose_publishes_the_service_port(service: dict) -> None:
    assert PORT in container_ports(service)
    assert any(str(entry).startswith(f"{PORT}:") for entry in service["ports"]), "host port not published"


def test_compose_healthcheck_and_restart_policy(service: dict) -> None:
    check = service["healthcheck"]
    test = check["test"]
    probe = test if isinstance(test, str) else " ".join(test)
    assert re.search(rf"http://(127\.0\.0\.1|localhost):{PORT}/ready\b", probe), probe
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL")
    assert seconds(check["timeout"]) < seconds(check["interval"])
    assert seconds(check["start_period"]) >= 30
    assert service["restart"] in ("unless-stopped", "always", "on-failure")


def test_compose_mounts_user_checkpoints_read_only(service: dict) -> None:
    mounts = []
    for volume in service["volumes"]:
        if isinstance(volume, dict):
            mounts.append((volume["target"], bool(volume.get("read_only"))))
        else:
            parts = volume.split(":")
            mounts.append((parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    assert ("/checkpoints", True) in mounts, mounts


def compose_environment(service: dict) -> dict[str, str]:
    environment = service["environment"]
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


def test_compose_environment_is_overridable_from_the_shell(service: dict) -> None:
    for name, value in compose_environment(service).items():
        expected = f"${{{name}:-default}}"
        assert re.fullmatch(rf"\$\{{{name}:-[^}}]*\}}", value), f"{name}: {value!r}, expected {expected}"


def test_compose_only_sets_settings_the_app_knows(service: dict, dockerfile: list[tuple[str, str]]) -> None:
    fields = settings_fields()
    known = {f"PETSEG_{field.upper()}" for field in fields}
    compose_names = {n for n in compose_environment(service) if n.startswith("PETSEG_")}
    assert compose_names <= known, f"unknown settings in docker-compose.yml: {compose_names - known}"
    dockerfile_names = set(re.findall(r"\b(PETSEG_\w+)=", " ".join(instruction(dockerfile, "ENV"))))
    assert dockerfile_names <= known, f"unknown settings in Dockerfile: {dockerfile_names - known}"


def test_compose_defaults_are_valid_settings(service: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set on the host, the container gets the ${VAR:-default} values: they must validate and
    keep the embedded model (an empty PETSEG_CHECKPOINT counts as unset)."""
    settings_fields()
    from app.config import DEFAULT_CHECKPOINT, Settings

    for name in list(os.environ):
        if name.startswith("PETSEG_"):
            monkeypatch.delenv(name)
    for name, value in compose_environment(service).items():
        monkeypatch.setenv(name, substitute(value, {}))
    settings = Settings(_env_file=None)
    assert settings.checkpoint == DEFAULT_CHECKPOINT
    assert settings.api_key in (None, "")


def test_compose_checkpoint_example_points_into_the_mount() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"#.*PETSEG_CHECKPOINT=/checkpoints/\S+\.pt", text), "commented example missing"


# --------------------------------------------------------------------------------------------- .dockerignore
def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Approximation of the builder's matching (last match wins, ``!`` re-includes, a match on a parent
    directory excludes its contents). fnmatch's ``*`` also crosses ``/``, so this errs towards "ignored"."""
    result = False
    parents = [path] + ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").lstrip("/")
        bare = pattern[3:] if pattern.startswith("**/") else None
        if any(fnmatch.fnmatch(p, pattern) or (bare and fnmatch.fnmatch(p.split("/")[-1], bare))
               for p in parents):
            result = not negate
    return result


def test_dockerignore_keeps_data_environments_and_caches_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", "data/x.jpg", "dataset/oxford-iiit-pet/images/a.jpg",
                 "runs/unet/best.pt", ".git/HEAD", "app/__pycache__/main.cpython-311.pyc", ".pytest_cache/v",
                 "test-artifacts/a.png", "bench/results/r.json", "images.tar.gz", "images.tar.gz.part",
                 "petseg.egg-info/PKG-INFO", ".mypy_cache/x", ".ruff_cache/x"):
        assert ignored(path, patterns), f"{path} would be sent to the build context"


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = dockerignore_patterns()
    for path in ("pyproject.toml", "README.md", "models/weights/default.pt", "models/nets/unet.py", "app/main.py",
                 "app/static/index.html", "training/train.py"):
        assert not ignored(path, patterns), f"{path} is excluded but the image needs it"


# --------------------------------------------------------------------------------------------- README
def test_readme_and_docs_document_compose() -> None:
    assert "docker compose up" in (ROOT / "README.md").read_text()
    text = (ROOT / "docs" / "deployment.md").read_text()
    assert "docker compose up" in text
    assert "/checkpoints/" in text, "the docs should say how to serve a custom checkpoint through the volume"


# ---------------------------------------------------------------------------------- docker CLI (optional)
def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def require_docker_cli() -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed (optional: the static checks above cover the files)")


def compose_command() -> list[str]:
    """The compose plugin (`docker compose`) if the docker CLI has it, else a standalone `docker-compose`."""
    if shutil.which("docker") and docker("compose", "version", timeout=20).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (optional)")


def test_compose_file_validates_with_docker_compose() -> None:
    """`compose config` is client-side (schema validation and interpolation): it needs no engine."""
    command = compose_command() + ["-f", "docker-compose.yml", "config", "--quiet"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("PETSEG_")})
    assert result.returncode == 0, result.stderr


def test_dockerfile_passes_buildkit_checks() -> None:
    """`docker build --check` lints the Dockerfile without building; it needs a reachable engine."""
    require_docker_cli()
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        pytest.skip(f"no Docker engine reachable: {reason}")
    result = docker("build", "--check", ".", timeout=300)
    if result.returncode != 0 and re.search(r"unknown flag|requires buildx|BuildKit is", result.stderr):
        pytest.skip("this docker build has no --check (needs BuildKit / buildx)")
    assert result.returncode == 0, result.stderr + result.stdout
