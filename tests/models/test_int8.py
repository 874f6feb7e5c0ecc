"""int8 (static QDQ, calibrated on training photos): it runs, it is cached by checkpoint and calibration set;
ranges measured once travel in the checkpoint and serve int8 without the photos, and are refused where they do
not fit; and its accuracy gate: on the real sample's validation photos, mean Dice within 0.005 of fp32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from models.engine.quantize import (
    CALIBRATION_ENV,
    CALIBRATION_PHOTOS,
    CalibrationError,
    Int8Calibration,
    calibration_photos,
)
from models.engine.segmenter import SegmenterBase
from models.engine.selection import EngineChoice, installed_runtimes, open_segmenter
from tests.factories import blob_image, make_checkpoint
from training.data import list_split, load_sample
from training.export import main as export_main

pytestmark = [pytest.mark.usefixtures("export_cache"),
              pytest.mark.skipif("onnxruntime" not in installed_runtimes(), reason="int8 needs onnxruntime")]
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "default.pt"
GATE = 0.005
INT8_RUNTIMES = [pytest.param(name, marks=pytest.mark.skipif(name not in installed_runtimes(),
                                                             reason=f"{name} is not installed"))
                 for name in ("onnxruntime", "openvino")]


def test_calibration_takes_the_train_split_never_the_validation_photos(pet_dataset: Path) -> None:
    photos = calibration_photos(pet_dataset)
    train = {s.name for s in list_split(pet_dataset, "train")}
    assert photos and {p.stem for p in photos} <= train
    assert not {p.stem for p in photos} & {s.name for s in list_split(pet_dataset, "valid")}
    assert len(calibration_photos(pet_dataset, count=5)) == 5


def test_calibration_takes_a_plain_folder_of_photos(pet_dataset: Path) -> None:
    photos = calibration_photos(pet_dataset / "images", count=CALIBRATION_PHOTOS)
    assert len(photos) == len(list((pet_dataset / "images").iterdir()))


def test_no_calibration_photos_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="PETSEG_CALIBRATION_DATA"):
        calibration_photos(tmp_path / "missing")


def test_int8_engine_runs_and_is_cached_by_checkpoint_and_calibration(tiny_checkpoint: Path, pet_dataset: Path,
                                                                       export_cache: Path) -> None:
    import onnx

    engine = open_segmenter(tiny_checkpoint, runtime="onnxruntime", precision="int8", calibration=pet_dataset)
    assert (engine.info.runtime, engine.info.precision) == ("onnxruntime", "int8")
    prob = engine.predict(blob_image(70, 50)[0])
    assert prob.shape == (50, 70) and 0.0 <= prob.min() and prob.max() <= 1.0
    (cached,) = export_cache.glob(f"{file_sha256(tiny_checkpoint)[:24]}-*-int8-*.onnx")
    model = onnx.load(str(cached))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["petseg.precision"] == "int8" and meta["petseg.calibration"].startswith("18 photos")
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The final sigmoid stays in fp32: its output is not quantised.
    sigmoid = next(node for node in model.graph.node if node.op_type == "Sigmoid")
    assert not any(node.op_type == "QuantizeLinear" and sigmoid.output[0] in node.input for node in model.graph.node)


def test_int8_asked_for_without_photos_fails_and_auto_falls_back_to_torch(tiny_checkpoint: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CalibrationError):
        open_segmenter(tiny_checkpoint, runtime="onnxruntime", precision="int8", calibration=tmp_path / "none")
    monkeypatch.setattr("models.engine.selection.auto_engine", lambda *_, **__: EngineChoice("onnxruntime", "int8", "rule"))
    engine = open_segmenter(tiny_checkpoint, runtime="auto", precision="auto", calibration=tmp_path / "none")
    assert engine.info.runtime == "torch"


@pytest.fixture(scope="module")
def checkpoint_with_ranges(tiny_checkpoint: Path, pet_dataset: Path, tmp_path_factory: pytest.TempPathFactory
                           ) -> Path:
    """The tiny checkpoint re-exported with int8 ranges measured on the synthetic dataset's training photos."""
    out = tmp_path_factory.mktemp("ranges") / "with_ranges.pt"
    assert export_main(["--model", str(tiny_checkpoint), "--out", str(out), "--calibration", str(pet_dataset)]) == 0
    return out


@pytest.fixture
def no_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No calibration photos anywhere: the variable unset, and no dataset/oxford-iiit-pet in the working folder."""
    monkeypatch.delenv(CALIBRATION_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("no_photos")
def test_ranges_in_the_checkpoint_serve_int8_without_photos(checkpoint_with_ranges: Path, pet_dataset: Path,
                                                            export_cache: Path) -> None:
    ranges = Int8Calibration.from_dict(load_checkpoint(checkpoint_with_ranges).int8_calibration)
    assert ranges is not None and ranges.photos.startswith("18 photos")
    from_ranges = open_segmenter(checkpoint_with_ranges, runtime="onnxruntime", precision="int8")
    from_photos = open_segmenter(checkpoint_with_ranges, runtime="onnxruntime", precision="int8",
                                 calibration=pet_dataset)
    assert list(export_cache.glob(f"{file_sha256(checkpoint_with_ranges)[:24]}-*-int8-ranges-*.onnx"))
    # The stored ranges are the ones the photos give: the two int8 models compute the same probabilities.
    images = [blob_image(70, 50, seed=seed)[0] for seed in range(3)]
    for a, b in zip(from_ranges.predict_batch(images), from_photos.predict_batch(images), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.usefixtures("no_photos")
def test_ranges_measured_with_other_weights_are_refused_and_auto_falls_back_to_torch(
        checkpoint_with_ranges: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    retrained = load_checkpoint(checkpoint_with_ranges)
    name = next(k for k, v in retrained.model_state.items() if v.is_floating_point())
    retrained.model_state[name] = retrained.model_state[name] + 0.01
    path = save_checkpoint(retrained, tmp_path / "retrained.pt")
    with pytest.raises(CalibrationError, match="other weights"):
        open_segmenter(path, runtime="onnxruntime", precision="int8")
    monkeypatch.setattr("models.engine.selection.auto_engine", lambda *_, **__: EngineChoice("openvino", "int8", "rule"))
    assert open_segmenter(path).info.runtime == "torch"


def test_ranges_from_another_export_of_the_graph_are_refused(checkpoint_with_ranges: Path, tmp_path: Path) -> None:
    from models.engine.onnx_export import build_onnx, save_onnx
    from models.engine.quantize import quantize_int8

    checkpoint = load_checkpoint(checkpoint_with_ranges)
    ranges = Int8Calibration.from_dict(checkpoint.int8_calibration)
    assert ranges is not None
    foreign = Int8Calibration(ranges.ranges, ranges.photos, graph="0" * 64, weights=ranges.weights)
    fp32 = save_onnx(build_onnx(checkpoint), tmp_path / "fp32.onnx")
    with pytest.raises(CalibrationError, match="another ONNX export"):
        quantize_int8(fp32, tmp_path / "int8.onnx", checkpoint, ranges=foreign)


def test_export_keeps_ranges_while_the_weights_stay_and_drops_them_when_they_change(
        checkpoint_with_ranges: Path, tmp_path: Path) -> None:
    carded = tmp_path / "carded.pt"
    assert export_main(["--model", str(checkpoint_with_ranges), "--out", str(carded), "--card", "owner=pets"]) == 0
    assert load_checkpoint(carded).int8_calibration == load_checkpoint(checkpoint_with_ranges).int8_calibration
    mixed = tmp_path / "mixed.pt"
    fine_tuned = make_checkpoint(tmp_path / "fine_tuned.pt", image_size=64, seed=5)
    other = export_main(["--model", str(checkpoint_with_ranges), "--interpolate", f"{fine_tuned}:0.5",
                         "--out", str(mixed)])
    assert other == 0 and load_checkpoint(mixed).int8_calibration == {}


def _mean_dice(engine: SegmenterBase, images: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Mean per-image Dice at each photo's own resolution, threshold 0.5 (as petseg-evaluate scores)."""
    scores = []
    for prob, truth in zip(engine.predict_batch(images), masks, strict=True):
        predicted, target = prob > 0.5, truth > 0
        total = predicted.sum() + target.sum()
        scores.append(1.0 if total == 0 else 2.0 * (predicted & target).sum() / total)
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def validation_photos(sample_data: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    loaded = [load_sample(s, True, None) for s in list_split(sample_data, "valid")]
    return [image for image, _ in loaded], [mask for _, mask in loaded]


@pytest.fixture(scope="module")
def torch_fp32_dice(validation_photos: tuple[list[np.ndarray], list[np.ndarray]]) -> float:
    """The reference: the embedded model on the PyTorch engine in fp32."""
    dice = _mean_dice(open_segmenter(DEFAULT_WEIGHTS, runtime="torch", precision="fp32"), *validation_photos)
    assert dice > 0.8  # a real segmentation, so the comparisons mean something
    return dice


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no embedded model at models/weights/default.pt")
@pytest.mark.parametrize("runtime", INT8_RUNTIMES)
def test_int8_accuracy_gate_on_the_validation_photos(runtime: str, sample_data: Path, torch_fp32_dice: float,
                                                     validation_photos: tuple[list[np.ndarray], list[np.ndarray]]
                                                     ) -> None:
    """The gate for serving int8: mean Dice on the sample's validation split within 0.005 of fp32."""
    int8 = open_segmenter(DEFAULT_WEIGHTS, runtime=runtime, precision="int8", calibration=sample_data)
    dice_int8 = _mean_dice(int8, *validation_photos)
    assert abs(dice_int8 - torch_fp32_dice) <= GATE, f"int8 Dice {dice_int8:.4f} against fp32 {torch_fp32_dice:.4f}"


@pytest.mark.slow
@pytest.mark.usefixtures("no_photos")
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no embedded model at models/weights/default.pt")
@pytest.mark.skipif("openvino" not in installed_runtimes(), reason="openvino is not installed")
def test_the_embedded_model_serves_int8_from_its_own_ranges_within_the_gate(
        torch_fp32_dice: float, validation_photos: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """What ``auto`` serves on a CPU without AMX, with no photos on the machine: OpenVINO int8 from the ranges
    the embedded model carries, within 0.005 Dice of the PyTorch engine in fp32."""
    ranges = Int8Calibration.from_dict(load_checkpoint(DEFAULT_WEIGHTS).int8_calibration)
    assert ranges is not None, "the embedded model carries no int8 ranges: petseg-export --calibration"
    int8 = open_segmenter(DEFAULT_WEIGHTS, runtime="openvino", precision="int8")
    assert (int8.info.runtime, int8.info.precision) == ("openvino", "int8")
    dice_int8 = _mean_dice(int8, *validation_photos)
    assert abs(dice_int8 - torch_fp32_dice) <= GATE, f"int8 Dice {dice_int8:.4f} against fp32 {torch_fp32_dice:.4f}"
