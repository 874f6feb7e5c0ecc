"""Teachers for pseudo-labels: anything that turns a photo into a per-pixel pet probability at the photo's size.

Two kinds, behind one interface (:class:`Teacher`):

- :class:`CheckpointTeacher`: one or more petseg checkpoints (an ensemble: the mean of their maps), optionally
  with the horizontal mirror averaged in.
- :class:`OnnxSaliencyTeacher`: a salient-object model in ONNX (ISNet, U2-Net, ...) through a small adapter
  (:class:`OnnxAdapter`: input side, normalisation, what the output means). Such a model is a training-time tool
  only: nothing in the service imports it.

:class:`VetoedTeacher` combines a salient-object teacher with a pet model: the salient model draws the outline,
and the pet model removes the regions it does not believe are a pet (a chair, a car, a cushion next to the cat).
Every teacher describes itself (:meth:`Teacher.record`) so that labels say what made them.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from models.checkpoint import file_sha256

__all__ = ["OUTPUT_KINDS", "CheckpointTeacher", "OnnxAdapter", "OnnxSaliencyTeacher", "Teacher", "VetoedTeacher"]

log = logging.getLogger(__name__)
OUTPUT_KINDS = ("probability", "logits", "minmax")


class Teacher(Protocol):
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> HxW float32 pet probability in [0, 1], at the photo's size."""

    def record(self) -> dict[str, Any]:
        """What made the labels: kind, files with their sha256, settings. JSON-serialisable."""


@dataclass(frozen=True)
class OnnxAdapter:
    """How to feed a salient-object ONNX model and read its answer.

    ``size``: the square side the photo is resized to (None: the model's own fixed input side). Pixels become
    ``(x / 255 - mean) / std`` per channel, RGB, NCHW. ``output``: ``probability`` (already in [0, 1], as ISNet's
    export ends in a sigmoid), ``logits`` (a sigmoid is applied) or ``minmax`` (stretched to [0, 1] per photo, as
    U2-Net's reference code does). ``output_name``: which output is the map (None: the first)."""

    size: int | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: str = "probability"
    output_name: str | None = None

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {self.output!r}; expected one of {', '.join(OUTPUT_KINDS)}")
        if self.size is not None and self.size < 32:
            raise ValueError(f"the teacher's input side must be at least 32 pixels, not {self.size}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def to_input(self, image: np.ndarray, side: int) -> np.ndarray:
        resized = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if side < max(image.shape[:2])
                             else cv2.INTER_LINEAR)
        pixels = resized.astype(np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])

    def to_probability(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        """The model's (1, 1, S, S) or (S, S) answer -> HxW probabilities at the photo's size."""
        prob = np.asarray(raw, dtype=np.float32).reshape(raw.shape[-2:])
        if self.output == "logits":
            prob = 1.0 / (1.0 + np.exp(-prob))
        elif self.output == "minmax":
            low, high = float(prob.min()), float(prob.max())
            prob = (prob - low) / (high - low) if high > low else np.zeros_like(prob)
        prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(prob, 0.0, 1.0)


class OnnxSaliencyTeacher:
    """A salient-object ONNX model on OpenVINO (when installed and the side is the model's own) or ONNX Runtime."""

    def __init__(self, path: str | os.PathLike[str], adapter: OnnxAdapter | None = None, *,
                 runtime: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"teacher model not found: {self.path}")
        self.adapter = adapter or OnnxAdapter()
        self.threads = threads
        import onnx  # the file's declared input side, before any runtime compiles it

        try:
            graph = onnx.load(str(self.path), load_external_data=False).graph
        except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
            raise ValueError(f"{self.path} is not a readable ONNX model: {exc}") from None
        dims = graph.input[0].type.tensor_type.shape.dim
        self.input_name = graph.input[0].name
        fixed = [d.dim_value for d in dims[2:] if d.HasField("dim_value")]
        self.model_side = fixed[0] if len(fixed) == 2 and fixed[0] == fixed[1] else None
        self.side = self.adapter.size or self.model_side
        if self.side is None:
            raise ValueError(f"{self.path} has no fixed square input: give the side it runs at (--teacher-size)")
        outputs = [o.name for o in graph.output]
        self.output_name = self.adapter.output_name or outputs[0]
        if self.output_name not in outputs:
            raise ValueError(f"{self.path} has no output {self.output_name!r} (it has {', '.join(outputs)})")
        self.runtime = self._pick_runtime(runtime)
        self._run = self._open_openvino() if self.runtime == "openvino" else self._open_onnxruntime()
        self.sha256 = file_sha256(self.path)
        log.info("teacher %s on %s at %dx%d", self.path.name, self.runtime, self.side, self.side)

    def _pick_runtime(self, runtime: str) -> str:
        if runtime not in ("auto", "openvino", "onnxruntime"):
            raise ValueError(f"unknown teacher runtime {runtime!r}; expected auto, openvino or onnxruntime")
        fits_openvino = self.side == self.model_side  # OpenVINO runs the file's own shape only
        if runtime == "openvino" and not fits_openvino:
            raise ValueError(f"OpenVINO runs {self.path.name} at its own side {self.model_side}, not {self.side}: "
                             "use --teacher-runtime onnxruntime for another side")
        if runtime != "auto":
            return runtime
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "onnxruntime"
        return "openvino" if fits_openvino else "onnxruntime"

    def _open_openvino(self) -> Any:
        import openvino as ov

        core = ov.Core()
        # Without ENABLE_CPU_PINNING off, OpenVINO pins the inferring thread to the first core: two shards run
        # with one thread each then share core 0 and label at half the speed.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        request = compiled.create_infer_request()
        output = compiled.output(self.output_name)
        return lambda x: request.infer({self.input_name: x})[output]

    def _open_onnxruntime(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # a side other than the file's own warns once per output per run
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run([self.output_name], {self.input_name: x})[0]

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        return self.adapter.to_probability(self._run(self.adapter.to_input(image, self.side)), height, width)

    def record(self) -> dict[str, Any]:
        adapter = asdict(self.adapter)
        adapter["size"] = self.side
        return {"kind": "onnx-saliency", "file": self.path.name, "sha256": self.sha256, "runtime": self.runtime,
                "adapter": adapter}


class CheckpointTeacher:
    """The mean probability map of one or more petseg checkpoints, optionally with the mirrored photo averaged in.

    The small-blob filter is off: a teacher's soft map should say what the network believes, not what the
    service's post-processing keeps."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, flip: bool = False, runtime: str = "torch",
                 device: str = "cpu") -> None:
        from models.engine.selection import open_segmenter

        if not paths:
            raise ValueError("a checkpoint teacher needs at least one checkpoint")
        self.paths = [Path(p) for p in paths]
        self.flip = flip
        self.segmenters = []
        for path in self.paths:
            segmenter = open_segmenter(path, runtime=runtime, device=device, precision="fp32", compile="off")
            segmenter.min_blob_ratio = 0.0
            self.segmenters.append(segmenter)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        maps = []
        for segmenter in self.segmenters:
            maps.append(segmenter.predict(image))
            if self.flip:
                maps.append(segmenter.predict(np.ascontiguousarray(image[:, ::-1]))[:, ::-1])
        return np.clip(np.mean(maps, axis=0), 0.0, 1.0).astype(np.float32)

    def record(self) -> dict[str, Any]:
        return {"kind": "petseg-checkpoint", "flip": self.flip,
                "checkpoints": [{"file": p.name, "sha256": file_sha256(p), "arch": s.checkpoint.arch,
                                 "image_size": s.checkpoint.image_size,
                                 "border_is_pet": s.checkpoint.border_is_pet}
                                for p, s in zip(self.paths, self.segmenters, strict=True)]}


class VetoedTeacher:
    """The outline of ``outline`` (a salient-object teacher), minus every region that ``judge`` (a pet model)
    does not believe in.

    The outline map is thresholded at 0.5 and split into connected regions; a region whose mean ``judge``
    probability is under ``veto_below`` is set to 0 (background). Everything else keeps the outline teacher's
    soft value. A salient-object model finds "the thing in front", which is usually the pet but sometimes the
    sofa it sits on; a pet model rarely takes a whole sofa for a pet."""

    def __init__(self, outline: Teacher, judge: Teacher, veto_below: float = 0.2) -> None:
        if not 0.0 <= veto_below <= 1.0:
            raise ValueError(f"veto_below must be in [0, 1], not {veto_below}")
        self.outline, self.judge, self.veto_below = outline, judge, veto_below

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        outline = self.outline.probabilities(image)
        judge = self.judge.probabilities(image)
        return veto_regions(outline, judge, self.veto_below)

    def record(self) -> dict[str, Any]:
        return {"kind": "vetoed", "veto_below": self.veto_below, "outline": self.outline.record(),
                "judge": self.judge.record()}


def veto_regions(outline: np.ndarray, judge: np.ndarray, veto_below: float) -> np.ndarray:
    """``outline`` with its connected foreground regions (at 0.5) zeroed where ``judge``'s mean is under
    ``veto_below``."""
    count, labels = cv2.connectedComponents((outline > 0.5).astype(np.uint8), connectivity=8)
    result = outline.copy()
    for region in range(1, count):
        inside = labels == region
        if float(judge[inside].mean()) < veto_below:
            result[inside] = 0.0
    return result
