"""int8 (static QDQ, calibrated on training photos): it runs, it is cached by checkpoint and calibration set,
and its accuracy gate: on the real sample's validation photos, mean Dice within 0.005 of fp32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import file_sha256
from models.engines import EngineChoice, installed_runtimes, open_segmenter
from models.inference import SegmenterBase
from models.quantize import CALIBRATION_PHOTOS, CalibrationError, calibration_photos
from tests.factories import blob_image
from training.data import list_split, load_sample

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


def test_int8_asked_for_without_photos_fails_and_auto_falls_back_to_fp32(tiny_checkpoint: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CalibrationError):
        open_segmenter(tiny_checkpoint, runtime="onnxruntime", precision="int8", calibration=tmp_path / "none")
    monkeypatch.setattr("models.engines.auto_engine", lambda *_, **__: EngineChoice("onnxruntime", "int8", "rule"))
    engine = open_segmenter(tiny_checkpoint, runtime="auto", precision="auto", calibration=tmp_path / "none")
    assert (engine.runtime, engine.precision) == ("onnxruntime", "fp32")


def _mean_dice(engine: SegmenterBase, images: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Mean per-image Dice at each photo's own resolution, threshold 0.5 (as petseg-evaluate scores)."""
    scores = []
    for prob, truth in zip(engine.predict_batch(images), masks, strict=True):
        predicted, target = prob > 0.5, truth > 0
        total = predicted.sum() + target.sum()
        scores.append(1.0 if total == 0 else 2.0 * (predicted & target).sum() / total)
    return float(np.mean(scores))


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no embedded model at models/weights/default.pt")
@pytest.mark.parametrize("runtime", INT8_RUNTIMES)
def test_int8_accuracy_gate_on_the_validation_photos(runtime: str, sample_data: Path) -> None:
    """The gate for serving int8: mean Dice on the sample's validation split within 0.005 of fp32."""
    loaded = [load_sample(s, True, None) for s in list_split(sample_data, "valid")]
    images, masks = [image for image, _ in loaded], [mask for _, mask in loaded]
    fp32 = open_segmenter(DEFAULT_WEIGHTS, runtime=runtime, precision="fp32")
    int8 = open_segmenter(DEFAULT_WEIGHTS, runtime=runtime, precision="int8", calibration=sample_data)
    dice_fp32, dice_int8 = _mean_dice(fp32, images, masks), _mean_dice(int8, images, masks)
    assert dice_fp32 > 0.8  # a real segmentation, so the comparison means something
    assert abs(dice_int8 - dice_fp32) <= GATE, f"int8 Dice {dice_int8:.4f} against fp32 {dice_fp32:.4f}"
