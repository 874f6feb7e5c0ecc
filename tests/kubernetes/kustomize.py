"""A small kustomize renderer for the tests: the subset deploy/kubernetes uses, and an error for the rest.

Supported: ``resources`` (YAML files and kustomization folders), ``components``, ``patches`` (strategic-merge
patches and JSON 6902 operations, from ``path`` or inline ``patch``, with or without ``target``) and
``images``. Strategic merge follows Kubernetes' rules for the fields these manifests patch: maps merge key by
key, ``null`` deletes a key, the lists below merge item by item on their merge key, and every other list is
replaced. Where kubectl is installed, tests/kubernetes/test_manifests.py checks that this renders what
``kubectl kustomize`` renders.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "render"]

Document = dict[str, Any]
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "images"}
# Kubernetes' patchMergeKey for the lists a strategic-merge patch here may touch (others are replaced).
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath", "imagePullSecrets": "name",
}
PORT_MERGE_KEYS = ("containerPort", "port")  # container ports, Service ports


class KustomizeError(ValueError):
    """A kustomization this renderer does not support or cannot apply; the message names the file."""


def render(folder: Path, extra_components: tuple[Path, ...] = ()) -> list[Document]:
    """The documents ``kustomize build folder`` would print (not in its order), optionally with more
    components added to the folder's own."""
    return _build(Path(folder), extra_components, expect_kind="Kustomization")


def _load_kustomization(folder: Path, expect_kind: str) -> Document:
    for name in KUSTOMIZATION_NAMES:
        path = folder / name
        if path.is_file():
            spec = yaml.safe_load(path.read_text()) or {}
            break
    else:
        raise KustomizeError(f"no kustomization file in {folder}")
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != expect_kind:
        raise KustomizeError(f"{path}: expected kind {expect_kind}, found {spec.get('kind')}")
    return spec


def _build(folder: Path, extra_components: tuple[Path, ...], expect_kind: str) -> list[Document]:
    spec = _load_kustomization(folder, expect_kind)
    documents: list[Document] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            documents += _build(path, (), expect_kind="Kustomization")
        else:
            documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for component in [*(folder / c for c in spec.get("components", [])), *extra_components]:
        documents = _apply_component(component.resolve(), documents)
    return _transform(folder, spec, documents)


def _apply_component(folder: Path, documents: list[Document]) -> list[Document]:
    spec = _load_kustomization(folder, "Component")
    added: list[Document] = []
    for entry in spec.get("resources", []):
        added += [doc for doc in yaml.safe_load_all((folder / entry).read_text()) if doc]
    return _transform(folder, spec, documents + added)


def _transform(folder: Path, spec: Document, documents: list[Document]) -> list[Document]:
    documents = copy.deepcopy(documents)
    for patch in spec.get("patches", []):
        documents = _apply_patch(folder, patch, documents)
    for image in spec.get("images", []):
        for document in documents:
            _set_image(document, image)
    return documents


# ------------------------------------------------------------------------------------------------ patches
def _apply_patch(folder: Path, entry: Document, documents: list[Document]) -> list[Document]:
    if "path" in entry:
        text = (folder / entry["path"]).read_text()
    elif "patch" in entry:
        text = entry["patch"]
    else:
        raise KustomizeError(f"{folder}: a patch needs path or patch: {entry}")
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):  # JSON 6902
        if not target:
            raise KustomizeError(f"{folder}: a JSON 6902 patch needs a target")
        matches = [doc for doc in documents if _selected(doc, target)]
        if not matches:
            raise KustomizeError(f"{folder}: no resource matches the patch target {target}")
        for document in matches:
            for operation in body:
                _json6902(document, operation)
        return documents
    target = target or {"kind": body["kind"], "name": body["metadata"]["name"]}
    matches = [doc for doc in documents if _selected(doc, target)]
    if not matches:
        raise KustomizeError(f"{folder}: no resource matches the patch {target}")
    return [_strategic_merge(doc, body) if doc in matches else doc for doc in documents]


def _selected(document: Document, target: Document) -> bool:
    group_version = document.get("apiVersion", "")
    group, _, version = group_version.rpartition("/")
    checks = {"kind": document.get("kind"), "name": document.get("metadata", {}).get("name"),
              "group": group, "version": version}
    unknown = set(target) - set(checks)
    if unknown:
        raise KustomizeError(f"patch target fields this renderer does not implement: {sorted(unknown)}")
    return all(checks[key] == value for key, value in target.items())


def _strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, dict):
        if "$patch" in patch or any(key.startswith("$") for key in patch):
            raise KustomizeError(f"strategic-merge directives are not implemented: {sorted(patch)}")
        merged = dict(base) if isinstance(base, dict) else {}
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _strategic_merge(merged.get(key), value, key)
        return merged
    if isinstance(patch, list) and isinstance(base, list):
        key = MERGE_KEYS.get(field)
        if field == "ports":
            key = next((k for k in PORT_MERGE_KEYS if all(k in item for item in patch + base)), None)
        if key is None:
            return copy.deepcopy(patch)
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next((i for i, old in enumerate(merged_list) if old.get(key) == item[key]), None)
            if index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = _strategic_merge(merged_list[index], item, field)
        return merged_list
    return copy.deepcopy(patch)


def _json6902(document: Document, operation: Document) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].lstrip("/").split("/")]
    parent: Any = document
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    op = operation["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise KustomizeError(f"JSON 6902 op {op!r} is not implemented")
        return
    if op in ("add", "replace"):
        if op == "replace" and last not in parent:
            raise KustomizeError(f"JSON 6902 replace of a missing path: {operation['path']}")
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"JSON 6902 op {op!r} is not implemented")


# ------------------------------------------------------------------------------------------------ images
def _pod_spec(document: Document) -> Document | None:
    spec = document.get("spec", {})
    if "containers" in spec:
        return spec
    template = spec.get("template", {}).get("spec")
    if template is not None:
        return template
    return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")


def _set_image(document: Document, image: Document) -> None:
    pod = _pod_spec(document)
    if pod is None:
        return
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, tag = _split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        tag = image.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


def _split_image(reference: str) -> tuple[str, str | None]:
    """``registry:5000/petseg:0.1`` -> (``registry:5000/petseg``, ``0.1``); digests are not supported."""
    if "@" in reference:
        raise KustomizeError(f"image digests are not implemented: {reference}")
    last_slash = reference.rfind("/")
    name, colon, tag = reference.rpartition(":")
    if colon and reference.rfind(":") > last_slash:
        return name, tag
    return reference, None
