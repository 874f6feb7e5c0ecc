"""``--runtime`` and ``--precision`` on petseg-predict: any runtime through the same command, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.engine.selection import installed_runtimes
from training import predict


@pytest.fixture(scope="module")
def photos(pet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for image in sorted((pet_dataset / "images").glob("beagle_*.jpg"))[:3]:
        folder.joinpath(image.name).write_bytes(image.read_bytes())
    return folder


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*_mask.png"))}


@pytest.mark.usefixtures("export_cache")
@pytest.mark.skipif("onnxruntime" not in installed_runtimes(), reason="onnxruntime is not installed")
def test_predict_on_onnxruntime_writes_the_masks_torch_writes(photos: Path, tiny_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    common = ["--model", str(tiny_checkpoint), str(photos), "--device", "cpu", "--precision", "fp32"]
    assert predict.main([*common, "--runtime", "torch", "--out", str(tmp_path / "torch")]) == 0
    assert predict.main([*common, "--runtime", "onnxruntime", "--out", str(tmp_path / "ort")]) == 0
    torch_masks, ort_masks = _masks(tmp_path / "torch"), _masks(tmp_path / "ort")
    assert len(torch_masks) == 3 and torch_masks.keys() == ort_masks.keys()
    for name, mask in torch_masks.items():
        assert mask.shape == ort_masks[name].shape
        assert np.mean(mask != ort_masks[name]) <= 0.005  # pixels right at the 0.5 threshold may flip


def test_predict_int8_on_torch_is_exit_2(photos: Path, tiny_checkpoint: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = predict.main(["--model", str(tiny_checkpoint), str(photos), "--runtime", "torch", "--precision", "int8",
                         "--out", str(tmp_path)])
    assert code == 2
    assert "int8 runs on the onnxruntime or openvino runtime" in capsys.readouterr().err


def test_predict_unknown_runtime_is_exit_2(photos: Path, tiny_checkpoint: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model", str(tiny_checkpoint), str(photos), "--runtime", "tensorrt", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
