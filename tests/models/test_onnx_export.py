"""``petseg-export --format onnx``: a valid ONNX model with the checkpoint's facts, dynamic sizes, and the same
probabilities as PyTorch (within 1e-3) on random and real images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import file_sha256, load_checkpoint
from models.engine.onnx_export import normalise_pixels
from models.engine.segmenter import resize_for_model
from tests.factories import blob_image
from training.data import list_split, load_sample
from training.export import main as export_main

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install 'petseg[onnx]')")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install 'petseg[onnx]')")

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "default.pt"
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert export_main(["--model", str(tiny_checkpoint), "--format", "onnx", "--out", str(out),
                        "--card", "licence=CC BY-SA 4.0"]) == 0
    return out


def _real_batches(images: list[np.ndarray], size: int, mean: tuple[float, ...], std: tuple[float, ...]
                  ) -> list[np.ndarray]:
    """Photos as the service feeds them (model size) and one at its own odd size: normalised (1,3,H,W)."""
    batches = [normalise_pixels(resize_for_model(image, size).transpose(2, 0, 1)[None], mean, std)
               for image in images]
    odd = images[0][: images[0].shape[0] // 2 * 2 - 1, : images[0].shape[1] // 2 * 2 - 3]
    batches.append(normalise_pixels(np.ascontiguousarray(odd.transpose(2, 0, 1))[None], mean, std))
    return batches


def test_onnx_export_passes_the_checker_and_carries_the_checkpoint_facts(tiny_checkpoint: Path,
                                                                         tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert meta["petseg.format"] == "petseg-onnx/1"
    assert meta["petseg.arch"] == checkpoint.arch
    assert int(meta["petseg.image_size"]) == checkpoint.image_size
    assert json.loads(meta["petseg.mean"]) == pytest.approx(checkpoint.mean)
    assert json.loads(meta["petseg.std"]) == pytest.approx(checkpoint.std)
    assert int(meta["petseg.epoch"]) == checkpoint.epoch
    assert json.loads(meta["petseg.metrics"]) == {"val_dice": 0.5}
    assert json.loads(meta["petseg.card"]) == {"licence": "CC BY-SA 4.0"}
    assert meta["petseg.checkpoint_sha256"] == file_sha256(tiny_checkpoint)
    assert meta["petseg.precision"] == "fp32"


def test_onnx_export_has_named_dynamic_batch_height_and_width(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    (image,), (probability,) = model.graph.input, model.graph.output
    assert (image.name, probability.name) == ("image", "probability")
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (image, probability)]
    assert dims == [["batch", 3, "height", "width"], ["batch", 1, "height", "width"]]


def test_onnx_export_is_folded_no_batchnorm_left(tiny_onnx: Path) -> None:
    ops = {node.op_type for node in onnx.load(str(tiny_onnx)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops and "Sigmoid" in ops


def test_onnx_probabilities_match_torch_on_random_and_real_images_of_any_size(tiny_checkpoint: Path,
                                                                               tiny_onnx: Path) -> None:
    pytest.importorskip("onnxruntime", reason="running the export needs onnxruntime")
    from models.engine.onnx_export import max_probability_difference

    checkpoint = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(1)
    random = [rng.standard_normal(shape, dtype=np.float32) for shape in ((3, 3, 64, 64), (1, 3, 70, 50),
                                                                        (2, 3, 33, 97))]
    blobs = [blob_image(90 + 13 * i, 60 + 7 * i, seed=i)[0] for i in range(2)]
    real = _real_batches(blobs, checkpoint.image_size, checkpoint.mean, checkpoint.std)
    assert max_probability_difference(checkpoint, tiny_onnx, random + real) <= TOLERANCE


def test_export_refuses_half_for_onnx(tiny_checkpoint: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--model", str(tiny_checkpoint), "--format", "onnx", "--half", "--out", str(tmp_path / "m")])
    assert exit_info.value.code == 2
    assert "--half applies to checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_int8_export_without_calibration_photos_is_a_clear_error(tiny_checkpoint: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime", reason="int8 needs onnxruntime's quantisation tool")
    empty = tmp_path / "no-photos"
    empty.mkdir()
    out = tmp_path / "int8.onnx"
    code = export_main(["--model", str(tiny_checkpoint), "--format", "onnx", "--precision", "int8",
                        "--calibration", str(empty), "--out", str(out)])
    assert code == 2
    assert "int8 needs calibration photos and found none" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no embedded model at models/weights/default.pt")
def test_embedded_model_exports_and_matches_torch_on_real_pets(export_cache: Path, sample_data: Path) -> None:
    """The embedded model as the onnxruntime runtime exports it at start-up (the int8 gate reuses the file)."""
    pytest.importorskip("onnxruntime", reason="running the export needs onnxruntime")
    from models.engine.onnx_export import max_probability_difference
    from models.engine.selection import open_segmenter

    open_segmenter(DEFAULT_WEIGHTS, runtime="onnxruntime", precision="fp32")
    (exported,) = export_cache.glob(f"{file_sha256(DEFAULT_WEIGHTS)[:24]}-*-fp32.onnx")
    onnx.checker.check_model(str(exported))
    checkpoint = load_checkpoint(DEFAULT_WEIGHTS)
    photos = [load_sample(s, True, None)[0] for s in list_split(sample_data, "valid")[:4]]
    batches = _real_batches(photos, checkpoint.image_size, checkpoint.mean, checkpoint.std)
    rng = np.random.default_rng(2)
    batches.append(rng.standard_normal((2, 3, checkpoint.image_size, checkpoint.image_size), dtype=np.float32))
    assert max_probability_difference(checkpoint, exported, batches) <= TOLERANCE


def _int8_runs(path: Path, size: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(3).standard_normal((1, 3, size, size), dtype=np.float32)
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.mark.slow
def test_int8_export_writes_a_quantised_model_calibrated_on_photos_or_on_the_checkpoints_ranges(
        tiny_checkpoint: Path, pet_dataset: Path, tmp_path: Path) -> None:
    """The README's int8 command: with --calibration photos, and with the ranges the checkpoint carries."""
    pytest.importorskip("onnxruntime", reason="int8 needs onnxruntime's quantisation tool")
    out = tmp_path / "int8.onnx"
    assert export_main(["--model", str(tiny_checkpoint), "--format", "onnx", "--precision", "int8",
                        "--calibration", str(pet_dataset), "--out", str(out)]) == 0
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert _int8_runs(out, 64).shape[-2:] == (64, 64)
    carrying = tmp_path / "with-ranges.pt"
    assert export_main(["--model", str(tiny_checkpoint), "--calibration", str(pet_dataset),
                        "--out", str(carrying)]) == 0
    from_ranges = tmp_path / "from-ranges.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PETSEG_CALIBRATION_DATA", str(tmp_path / "nowhere"))  # no photos to fall back on
        assert export_main(["--model", str(carrying), "--format", "onnx", "--precision", "int8",
                            "--out", str(from_ranges)]) == 0
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(from_ranges)).graph.node}
