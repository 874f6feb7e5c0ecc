"""ONNX export of a checkpoint: the BatchNorm-folded fp32 model, for ONNX Runtime, OpenVINO, Triton, TensorRT...

The graph takes ``image``, float32 (N, 3, H, W) of any N, H and W: RGB scaled to 0..1, then ``(x - mean) / std``
with the checkpoint's mean and std (in the metadata). It returns ``probability``, float32 (N, 1, H, W): the
sigmoid of the logits, the pet's probability per pixel. Padding to the architecture's size multiple happens in the
graph, so any size works, as it does in PyTorch. The checkpoint's metadata and model card travel in the ONNX
``metadata_props`` (keys ``petseg.*``; values are strings, JSON where structured).

Exported with ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript): the TorchScript exporter is
deprecated. ``onnx`` and ``onnxscript`` are needed (``pip install 'petseg[onnx]'``); imported lazily.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.atomic_files import write_atomically
from models.checkpoint import Checkpoint
from models.engine.fusion import fold_batchnorm

if TYPE_CHECKING:
    import onnx

__all__ = ["INPUT_NAME", "ONNX_FORMAT", "OUTPUT_NAME", "ProbabilityGraph", "build_onnx", "folded_fp32_model",
           "max_probability_difference", "normalise_pixels", "quiet_loggers", "read_metadata", "save_onnx",
           "set_metadata"]

log = logging.getLogger(__name__)

ONNX_FORMAT = "petseg-onnx/1"
INPUT_NAME, OUTPUT_NAME = "image", "probability"
_DIM_NAMES = ("batch", None, "height", "width")
# The exporter's loggers: a warning per missing torchvision op, progress lines, a line per de-duplicated
# initializer (onnx_ir's passes); not news for this model.
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._core",
                  "torch.onnx._internal.exporter._compat", "onnxscript", "onnx_ir")


class ProbabilityGraph(nn.Module):
    """What is exported: pad to the size multiple, run the model, sigmoid, crop back.

    The padded size is written as ``ceil(h / m) * m`` so that torch.export can prove it is a multiple of ``m``:
    the model's own ``pad_to_multiple`` then pads nothing for any input size, instead of being specialised to the
    example's size (a graph traced at 192x192 would otherwise fail on a 70x50 input)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.multiple = int(getattr(model, "size_multiple", 1))

    def forward(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        pad_h = (height + self.multiple - 1) // self.multiple * self.multiple - height
        pad_w = (width + self.multiple - 1) // self.multiple * self.multiple - width
        padded = F.pad(image, [0, pad_w, 0, pad_h], mode="replicate")
        return torch.sigmoid(self.model(padded))[..., :height, :width]


def normalise_pixels(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (N,3,H,W) pixels -> the graph's float32 input: RGB/255, then (x - mean) / std."""
    scale = (1.0 / (np.asarray(std, np.float32) * 255.0)).reshape(1, 3, 1, 1)
    offset = (np.asarray(mean, np.float32) * 255.0).reshape(1, 3, 1, 1)
    return (pixels.astype(np.float32) - offset) * scale


def folded_fp32_model(checkpoint: Checkpoint) -> nn.Module:
    """The inference model as the engine runs it in fp32: eval mode, BatchNorm folded into the convolutions."""
    model = checkpoint.build_model().eval()
    fold_batchnorm(model)
    return model


def build_onnx(checkpoint: Checkpoint, *, checkpoint_sha256: str | None = None) -> onnx.ModelProto:
    """Export the folded fp32 model with dynamic batch, height and width; metadata attached; checked with
    ``onnx.checker``. Takes tens of seconds on a small CPU (torch.export traces the whole model)."""
    import onnx

    graph = ProbabilityGraph(folded_fp32_model(checkpoint)).eval()
    size = max(checkpoint.image_size, 2)  # 0 and 1 would be specialised by torch.export
    example = torch.zeros(2, 3, size, size)
    dynamic = torch.export.Dim.DYNAMIC
    with quiet_loggers(*_NOISY_LOGGERS), warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch.export's own
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME],
                                    dynamic_shapes={"image": {0: dynamic, 2: dynamic, 3: dynamic}}, verbose=False)
    assert program is not None  # dynamo=True always returns the program
    model = program.model_proto
    _name_dimensions(model)
    model.doc_string = (f"petseg {checkpoint.arch}: pet/background segmentation. Input '{INPUT_NAME}': float32 "
                        f"(N,3,H,W) RGB/255, normalised with petseg.mean and petseg.std. Output '{OUTPUT_NAME}': "
                        f"float32 (N,1,H,W) pet probability.")
    set_metadata(model, checkpoint_metadata(checkpoint, checkpoint_sha256))
    onnx.checker.check_model(model)
    return model


def checkpoint_metadata(checkpoint: Checkpoint, checkpoint_sha256: str | None) -> dict[str, str]:
    """The checkpoint's facts as ONNX metadata strings (JSON for lists and dicts)."""
    return {
        "petseg.format": ONNX_FORMAT,
        "petseg.arch": checkpoint.arch,
        "petseg.image_size": str(checkpoint.image_size),
        "petseg.mean": json.dumps(list(checkpoint.mean)),
        "petseg.std": json.dumps(list(checkpoint.std)),
        "petseg.border_is_pet": json.dumps(checkpoint.border_is_pet),
        "petseg.epoch": str(checkpoint.epoch),
        "petseg.metrics": json.dumps(checkpoint.metrics),
        "petseg.created_at": checkpoint.created_at,
        "petseg.card": json.dumps(checkpoint.card, default=str),
        "petseg.checkpoint_sha256": checkpoint_sha256 or "",
        "petseg.precision": "fp32",
        "petseg.input": f"{INPUT_NAME}: float32 (N,3,H,W), RGB/255 then (x - mean) / std",
        "petseg.output": f"{OUTPUT_NAME}: float32 (N,1,H,W), sigmoid of the logits",
    }


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (or replace) ``metadata_props`` entries."""
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def max_probability_difference(checkpoint: Checkpoint, model_file: str | os.PathLike[str],
                               batches: Sequence[np.ndarray]) -> float:
    """Largest absolute difference between the probabilities of the ONNX model (run by ONNX Runtime) and of the
    folded fp32 PyTorch model, over normalised float32 (N,3,H,W) batches of any sizes."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    reference = ProbabilityGraph(folded_fp32_model(checkpoint)).eval()
    worst = 0.0
    for batch in batches:
        with torch.no_grad():
            expected = reference(torch.from_numpy(batch)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        if got.shape != expected.shape:
            raise ValueError(f"the ONNX model returned {got.shape} for {batch.shape}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write atomically and durably, as checkpoints are written."""
    return write_atomically(path, lambda handle: handle.write(model.SerializeToString()), durable=True)


def _name_dimensions(model: onnx.ModelProto) -> None:
    """Readable dynamic dimensions: ``batch``, ``height``, ``width`` instead of torch.export's ``s77`` and the
    output's ``Min(s53, 32*(((s53 + 31)//32)))``."""
    for value in list(model.graph.input) + list(model.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, _DIM_NAMES, strict=True):
            if name is not None:
                dim.dim_param = name


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the given loggers to ERROR for the duration ("" is the root logger, which some tools log to)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
