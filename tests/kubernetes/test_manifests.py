"""deploy/kubernetes without a cluster: every manifest validates against the Kubernetes schemas (offline,
with kubernetes-validate), the overlays render, and what the manifests say agrees with the app, the image and
the CLIs (probe routes and port, PETSEG_* settings, uid, API key, metric names, --shard, torchrun flags)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from tests.kubernetes.kustomize import KustomizeError, render
from tests.test_deploy_files import command_words, instruction, parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
QUEUE_DEPTH = KUBE / "components" / "queue-depth-autoscaling"
EXAMPLES = KUBE / "examples"
# The oldest release with everything used here on by default (Indexed Jobs' backoffLimitPerIndex: 1.29), and
# the newest whose schemas kubernetes-validate ships.
OLDEST_KUBERNETES = "1.29.0"
BUILDS = {
    "cpu": (KUBE / "overlays" / "cpu", ()),
    "gpu": (KUBE / "overlays" / "gpu", ()),
    "gpu+queue-depth": (KUBE / "overlays" / "gpu", (QUEUE_DEPTH,)),
    "batch": (KUBE / "batch", ()),
}
SERVER_BUILDS = ("cpu", "gpu", "gpu+queue-depth")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("kubeflow.org/v1", "PyTorchJob")}

Document = dict[str, Any]


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def builds() -> dict[str, list[Document]]:
    return {name: render(folder, components) for name, (folder, components) in BUILDS.items()}


def example(name: str) -> list[Document]:
    return [doc for doc in yaml.safe_load_all((EXAMPLES / name).read_text()) if doc]


def one(documents: list[Document], kind: str, name: str | None = None) -> Document:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: Document) -> Document:
    return workload["spec"]["template"]["spec"]


def container(workload: Document) -> Document:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_value(c: Document, name: str) -> Document:
    return next(item for item in c.get("env", []) if item["name"] == name)


def mounted_path(workload: Document, path: str) -> Document:
    """The volume mount that holds ``path`` (the longest mount path that is a prefix of it)."""
    mounts = [m for m in container(workload)["volumeMounts"]
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no mounted volume"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def all_manifest_documents(builds: dict[str, list[Document]]) -> Iterator[tuple[str, Document]]:
    for name, documents in builds.items():
        for document in documents:
            yield name, document
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in example(path.name):
            if "kind" in document:  # the Prometheus Adapter's Helm values are not a Kubernetes object
                yield path.name, document


def settings_fields() -> set[str]:
    from app.config import Settings

    return {f"PETSEG_{field.upper()}" for field in Settings.model_fields}


# ------------------------------------------------------------------------------------------------ schemas
@pytest.fixture(scope="module")
def validator():
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (test extra) holds the Kubernetes schemas")
    return kubernetes_validate


def test_every_manifest_validates_against_the_kubernetes_schemas(
    builds: dict[str, list[Document]], validator,
) -> None:
    versions = (OLDEST_KUBERNETES, validator.latest_version())
    checked, seen = 0, []
    for source, document in all_manifest_documents(builds):
        if (document["apiVersion"], document["kind"]) in CRD_KINDS:
            continue  # custom resources: checked by the structural tests below
        if document in seen:
            continue  # the same object in another build (the Service of cpu and gpu...): validated once
        seen.append(document)
        for version in versions:
            try:
                validator.validate(document, version, strict=True)
            except validator.ValidationError as exc:
                location = "/".join(str(p) for p in exc.path)
                pytest.fail(f"{source}: {document['kind']} {document['metadata']['name']} at {location} "
                            f"(Kubernetes {version}): {exc.message}")
        checked += 1
    assert checked >= 12


def test_the_schema_check_rejects_a_misspelt_field_and_a_wrong_type(
    builds: dict[str, list[Document]], validator,
) -> None:
    deployment = one(builds["gpu"], "Deployment")
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    container(typo)["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(validator.ValidationError, match="paht"):
        validator.validate(typo, OLDEST_KUBERNETES, strict=True)
    wrong = yaml.safe_load(yaml.safe_dump(deployment))
    pod_spec(wrong)["terminationGracePeriodSeconds"] = "45s"
    with pytest.raises(validator.ValidationError):
        validator.validate(wrong, OLDEST_KUBERNETES, strict=True)


def test_pytorchjob_pod_templates_validate_as_pod_templates(validator) -> None:
    """The custom resource's own fields are checked below; its pod templates are core Kubernetes."""
    job = one(example("train-pytorchjob.yaml"), "PyTorchJob")
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"petseg-train-{role.lower()}"}, "template": replica["template"]}
        validator.validate(wrapper, OLDEST_KUBERNETES, strict=True)


# ------------------------------------------------------------------------------------------------ rendering
def test_every_base_manifest_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in (KUBE / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert files == listed


def test_overlays_render_the_whole_service(builds: dict[str, list[Document]]) -> None:
    for name in SERVER_BUILDS:
        kinds = sorted((d["kind"], d["metadata"]["name"]) for d in builds[name])
        assert kinds == [("ConfigMap", "petseg-config"), ("Deployment", "petseg"),
                         ("HorizontalPodAutoscaler", "petseg"), ("PodDisruptionBudget", "petseg"),
                         ("Service", "petseg"), ("ServiceMonitor", "petseg")], name


def test_gpu_overlay_asks_for_one_nvidia_gpu_on_gpu_nodes(builds: dict[str, list[Document]]) -> None:
    deployment = one(builds["gpu"], "Deployment")
    resources = container(deployment)["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == "1"
    spec = pod_spec(deployment)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert one(builds["gpu"], "ConfigMap")["data"]["PETSEG_DEVICE"] == "cuda"
    # The patch merged into the base container instead of replacing it.
    assert container(deployment)["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_cpu_overlay_is_guaranteed_qos_on_whole_cores_without_gpus(builds: dict[str, list[Document]]) -> None:
    deployment = one(builds["cpu"], "Deployment")
    resources = container(deployment)["resources"]
    assert resources["requests"] == resources["limits"]
    assert float(resources["limits"]["cpu"]).is_integer()
    assert "nvidia.com/gpu" not in resources["limits"] and "nodeSelector" not in pod_spec(deployment)
    assert one(builds["cpu"], "ConfigMap")["data"]["PETSEG_DEVICE"] == "cpu"


def test_queue_depth_component_replaces_the_cpu_metric(builds: dict[str, list[Document]]) -> None:
    assert one(builds["gpu"], "HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    hpa = one(builds["gpu+queue-depth"], "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "petseg_queue_depth"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)  # the gpu overlay's patch stays


def test_the_gpu_overlay_names_the_queue_depth_component_it_documents() -> None:
    text = (KUBE / "overlays" / "gpu" / "kustomization.yaml").read_text()
    assert re.search(r"#\s+-\s+\.\./\.\./components/queue-depth-autoscaling\s*$", text, re.M)


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)


def kubectl_kustomize(folder: Path) -> list[Document]:
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_name(documents: list[Document]) -> dict[tuple[str, str], Document]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def test_renderer_agrees_with_kubectl_kustomize(builds: dict[str, list[Document]], tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (optional: the renderer above covers the overlays)")
    for name in ("cpu", "gpu", "batch"):
        assert by_name(kubectl_kustomize(BUILDS[name][0])) == by_name(builds[name]), name
    # The documented component, switched on in a copy of the tree as the comment in the gpu overlay says.
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBE, tree)
    overlay = tree / "overlays" / "gpu" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("# components:", "components:")
                       .replace("#   - ../../components/", "  - ../../components/"))
    assert by_name(kubectl_kustomize(overlay.parent)) == by_name(builds["gpu+queue-depth"])


# ------------------------------------------------------------------------------------------------ the service
@pytest.mark.parametrize("build", SERVER_BUILDS)
def test_the_container_runs_the_images_command_as_its_user(
    build: str, builds: dict[str, list[Document]],
) -> None:
    steps = dockerfile()
    deployment = one(builds[build], "Deployment")
    c = container(deployment)
    assert c["command"] == command_words(instruction(steps, "CMD")[-1])
    uid = re.search(r"useradd\b.*--uid (\d+)", " ".join(instruction(steps, "RUN")))
    assert uid, "the Dockerfile creates no user with a fixed uid"
    security = pod_spec(deployment)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(uid.group(1))
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = mounted_path(deployment, "/tmp")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == tmp["name"])
    assert tmp["mountPath"] == "/tmp" and "emptyDir" in volume
    assert env_value(c, "HOME")["value"].startswith("/tmp")


@pytest.mark.parametrize("build", SERVER_BUILDS)
def test_the_image_is_petseg_at_the_projects_version(build: str, builds: dict[str, list[Document]]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    repository = compose["services"]["petseg"]["image"].split(":")[0]
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert container(one(builds[build], "Deployment"))["image"] == f"{repository}:{version}"


def container_port(deployment: Document, port: int | str) -> int:
    ports = container(deployment)["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"port {port} is not a container port"
        return port
    return next(p["containerPort"] for p in ports if p["name"] == port)


@pytest.mark.parametrize("build", SERVER_BUILDS)
def test_probes_use_the_apps_routes_on_the_port_it_serves(
    build: str, builds: dict[str, list[Document]],
) -> None:
    from app.__main__ import build_parser
    from app.main import create_app

    deployment = one(builds[build], "Deployment")
    c = container(deployment)
    served = build_parser().parse_args(c["command"][1:])
    routes = set(create_app().openapi()["paths"])
    expected = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes, probe
        assert container_port(deployment, get["port"]) == served.port, probe
        assert c[probe]["timeoutSeconds"] < c[probe]["periodSeconds"], probe
    assert served.host == "0.0.0.0"
    # The Dockerfile's HEALTHCHECK start period is what the image needs to load and warm up: allow as much.
    start_period = re.search(r"--start-period=(\d+)s", " ".join(instruction(dockerfile(), "HEALTHCHECK")))
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= int(start_period.group(1))


def test_shutdown_leaves_time_for_the_pause_and_the_drain(
    builds: dict[str, list[Document]], monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path,
) -> None:
    """terminationGracePeriodSeconds covers the preStop pause plus uvicorn's drain of requests in flight."""
    import app.__main__ as serve

    captured: dict[str, Any] = {}
    monkeypatch.setattr(serve.uvicorn, "run", lambda *args, **kwargs: captured.update(kwargs))
    monkeypatch.setattr(serve.signal, "signal", lambda *args: None)
    monkeypatch.setattr(serve, "check_port_free", lambda host, port: None)  # the pod's port, maybe busy here
    monkeypatch.setenv("PETSEG_CHECKPOINT", str(tiny_checkpoint))
    deployment = one(builds["gpu"], "Deployment")
    assert serve.main(container(deployment)["command"][1:]) == 0
    drain = captured["timeout_graceful_shutdown"]
    pause_command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pause_command[0] == "sleep"
    pause = int(pause_command[1])
    assert pause >= 5
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= pause + drain


def configured_settings(documents: list[Document]) -> dict[str, str]:
    return dict(one(documents, "ConfigMap", "petseg-config")["data"])


def test_every_petseg_variable_in_the_manifests_is_a_setting() -> None:
    known = settings_fields()
    for path in sorted(KUBE.rglob("*.yaml")):
        named = set(re.findall(r"\bPETSEG_[A-Z0-9_]+\b", path.read_text()))
        assert named <= known, f"{path.relative_to(ROOT)} names unknown settings: {named - known}"


@pytest.mark.parametrize("build", SERVER_BUILDS)
def test_the_configmap_is_valid_settings(
    build: str, builds: dict[str, list[Document]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.config import DEFAULT_CHECKPOINT, Settings

    deployment = one(builds[build], "Deployment")
    assert {"configMapRef": {"name": "petseg-config"}} in container(deployment)["envFrom"]
    for name in [n for n in os.environ if n.startswith("PETSEG_")]:
        monkeypatch.delenv(name)
    data = configured_settings(builds[build])
    assert set(data) <= settings_fields()
    for name, value in data.items():
        assert isinstance(value, str), f"{name}: ConfigMap values are strings, got {value!r}"
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # raises on any invalid value
    assert settings.checkpoint == DEFAULT_CHECKPOINT
    assert "PETSEG_API_KEY" not in data, "the API key belongs in the Secret"


@pytest.mark.parametrize("build", SERVER_BUILDS)
def test_the_api_key_comes_from_a_required_secret_that_prometheus_uses_too(
    build: str, builds: dict[str, list[Document]],
) -> None:
    reference = env_value(container(one(builds[build], "Deployment")), "PETSEG_API_KEY")["valueFrom"]
    secret = reference["secretKeyRef"]
    assert not secret.get("optional", False), "without the Secret the pod must not start keyless"
    (endpoint,) = one(builds[build], "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"] == {"name": secret["name"], "key": secret["key"]}


@pytest.fixture(scope="module")
def keyed_client(tiny_checkpoint: Path) -> Iterator[TestClient]:
    from app.config import Settings
    from app.main import create_app

    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", api_key="k8s-secret", max_batch=1,
                        model_lanes=1, _env_file=None)  # one lane, one batch size: the shortest warm-up
    with TestClient(create_app(settings)) as client:
        yield client


def test_with_the_api_key_set_the_probes_pass_and_the_scrape_needs_the_bearer_token(
    builds: dict[str, list[Document]], keyed_client: TestClient,
) -> None:
    c = container(one(builds["gpu"], "Deployment"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert keyed_client.get(c[probe]["httpGet"]["path"]).status_code == 200, probe
    (endpoint,) = one(builds["gpu"], "ServiceMonitor")["spec"]["endpoints"]
    assert keyed_client.get(endpoint["path"]).status_code == 401
    scrape = keyed_client.get(endpoint["path"], headers={"Authorization": "Bearer k8s-secret"})
    assert scrape.status_code == 200
    assert re.search(r"^petseg_queue_depth \d", scrape.text, re.M), "the autoscaling metric is exported"


@pytest.mark.parametrize("build", SERVER_BUILDS)
def test_service_pdb_hpa_and_servicemonitor_point_at_the_deployment(
    build: str, builds: dict[str, list[Document]],
) -> None:
    documents = builds[build]
    deployment = one(documents, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(documents, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert container_port(deployment, service_port["targetPort"]) == 8000
    budget = one(documents, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = one(documents, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
    hpa = one(documents, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "petseg")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if any(m["type"] == "Resource" for m in hpa["spec"]["metrics"]):
        assert "cpu" in container(deployment)["resources"]["requests"], "CPU utilisation needs a CPU request"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; an apply would reset it"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rolling update keeps each pod until its successor is ready"


CRD_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
                          r"(([0-9]+)ms)?)$")  # the CRD's pattern for interval and scrapeTimeout
# The ServiceMonitor fields used here, as the Prometheus Operator's CRD (monitoring.coreos.com/v1) names them.
SERVICEMONITOR_SPEC_FIELDS = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                              "podTargetLabels", "sampleLimit"}
ENDPOINT_FIELDS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "authorization",
                   "honorLabels", "relabelings", "metricRelabelings", "tlsConfig", "params"}


def test_servicemonitor_structure_matches_the_operators_crd(builds: dict[str, list[Document]]) -> None:
    monitor = one(builds["gpu"], "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= SERVICEMONITOR_SPEC_FIELDS
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= ENDPOINT_FIELDS, set(endpoint) - ENDPOINT_FIELDS
        assert CRD_DURATION.match(endpoint["interval"]) and CRD_DURATION.match(endpoint["scrapeTimeout"])
        assert set(endpoint["authorization"]) <= {"type", "credentials"}
        assert set(endpoint["authorization"]["credentials"]) <= {"name", "key", "optional"}


def test_prometheus_adapter_rule_serves_the_metric_the_hpa_reads(builds: dict[str, list[Document]]) -> None:
    from app import metrics

    exported = metrics.render().decode()
    (values,) = example("prometheus-adapter-values.yaml")
    (rule,) = values["rules"]["custom"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.search(rf"^# TYPE {series} gauge$", exported, re.M), f"{series} is not a gauge the app exports"
    assert re.fullmatch(rule["name"]["matches"], series)
    hpa = one(builds["gpu+queue-depth"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


# ------------------------------------------------------------------------------------------------ batch
def test_predict_job_shards_match_the_jobs_completions(
    builds: dict[str, list[Document]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.predict import build_parser
    from training.shards import INDEX_VARIABLE, Shard

    job = one(builds["batch"], "Job", "petseg-predict")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and pod_spec(job)["restartPolicy"] == "Never"
    c = container(job)
    assert c["command"] == ["petseg-predict"]
    last_index = spec["completions"] - 1
    monkeypatch.setenv(INDEX_VARIABLE, str(last_index))  # as the Job controller sets it in the last pod
    args = build_parser().parse_args(c["args"])
    assert args.shard == Shard(last_index, spec["completions"])
    assert 1 <= spec["parallelism"] <= spec["completions"]
    for folder in args.inputs:
        assert mounted_path(job, folder).get("readOnly") is True
    assert not mounted_path(job, args.out).get("readOnly", False)
    assert c["image"].startswith("petseg:") and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounted_path(job, "/tmp")["mountPath"] == "/tmp"


# ------------------------------------------------------------------------------------------------ training
def torchrun_options(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """torchrun's options before ``-m``, and the module's own arguments after it."""
    split = words.index("-m")
    options = dict(zip(words[:split:2], words[1:split:2], strict=True))
    assert words[split + 1] == "training.train"
    return options, words[split + 2:]


def test_multinode_training_job_meets_at_pod_0_through_the_headless_service() -> None:
    from training.train import build_parser

    documents = example("train-multinode-job.yaml")
    service, job = one(documents, "Service"), one(documents, "Job")
    c = container(job)
    assert c["command"] == ["torchrun"]
    options, train_args = torchrun_options(c["args"])
    assert int(options["--nnodes"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert options["--rdzv-backend"] == "c10d"
    host, port = options["--rdzv-endpoint"].rsplit(":", 1)
    name, subdomain = job["metadata"]["name"], pod_spec(job)["subdomain"]
    assert host == f"{name}-0.{subdomain}" and service["metadata"]["name"] == subdomain
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    gpus = int(container(job)["resources"]["limits"]["nvidia.com/gpu"])
    assert int(options["--nproc-per-node"]) == gpus
    parsed = build_parser().parse_args(train_args)
    assert mounted_path(job, parsed.data_path)["readOnly"] is True
    assert not mounted_path(job, parsed.out).get("readOnly", False)
    assert mounted_path(job, "/dev/shm")["mountPath"] == "/dev/shm"


def test_pytorchjob_example_runs_torchrun_on_master_and_workers() -> None:
    from training.train import build_parser

    job = one(example("train-pytorchjob.yaml"), "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    nodes = sum(r["replicas"] for r in replicas.values())
    for replica in replicas.values():
        (c,) = replica["template"]["spec"]["containers"]
        assert c["name"] == "pytorch", "the Training Operator looks for the container named pytorch"
        script = c["args"][0].split()
        assert script[:2] == ["exec", "torchrun"]
        options, train_args = torchrun_options(script[2:])
        assert int(options["--nnodes"]) == nodes
        assert {options["--node-rank"], options["--master-addr"]} == {'"$RANK"', '"$MASTER_ADDR"'}
        build_parser().parse_args(train_args)


# -------------------------------------------------------------------------------------------------- docs
def test_the_docs_walk_through_kubernetes_and_say_no_cluster_ran_it() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("## Running on Kubernetes", 1)
    assert len(section) == 2, "docs/deployment.md has no 'Running on Kubernetes' section"
    body = " ".join(section[1].split("\n## ", 1)[0].split())  # line breaks as spaces
    for needed in ("kubectl apply -k deploy/kubernetes/overlays/gpu", "petseg-api-key", "--shard",
                   "kubectl rollout", "petseg_queue_depth", "torchrun --nnodes"):
        assert needed in body, needed
    assert "not yet been applied to a cluster" in body
