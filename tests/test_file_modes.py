"""Files written atomically (through ``mkstemp``, which makes them 0o600) end with the mode ``open()`` would give:
0o666 less the umask, so a web server, a container's other user or a colleague can read masks, checkpoints and
the export cache."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_checkpoints(tmp_path: Path, umask: int) -> None:
    import torch

    from models.checkpoint import Checkpoint, save_checkpoint

    path = save_checkpoint(Checkpoint(arch="unet", model_state={"w": torch.zeros(1)}, image_size=32), tmp_path / "c.pt")
    assert mode_of(path) == 0o666 & ~umask


def test_the_onnx_export(tmp_path: Path, umask: int) -> None:
    import onnx
    from onnx import TensorProto, helper

    from models.engine.onnx_export import save_onnx

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = save_onnx(helper.make_model(graph), tmp_path / "m.onnx")
    assert mode_of(path) == 0o666 & ~umask
    assert onnx.load(str(path)).graph.node[0].op_type == "Identity"


def test_predicted_masks(tmp_path: Path, umask: int) -> None:
    from training.predict import save_png

    path = tmp_path / "mask.png"
    save_png(np.zeros((4, 4), np.uint8), path)
    assert mode_of(path) == 0o666 & ~umask


def test_the_clients_masks(tmp_path: Path, umask: int) -> None:
    from app.client import write_atomically

    path = tmp_path / "out" / "mask.png"
    write_atomically(path, b"\x89PNG")
    assert mode_of(path) == 0o666 & ~umask and path.read_bytes() == b"\x89PNG"
