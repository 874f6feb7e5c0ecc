"""petseg-pseudolabel and its teachers: soft labels that say who made them, resumable, sharded, never stopped
by one bad photo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.factories import blob_image
from training.pseudolabel import RECORD_NAME, label_order, main, to_png_levels
from training.teachers import CheckpointTeacher, OnnxAdapter, OnnxSaliencyTeacher, VetoedTeacher, veto_regions

onnx = pytest.importorskip("onnx", reason="the ONNX teacher needs the onnx package (pip install -e '.[onnx]')")
pytest.importorskip("onnxruntime", reason="the ONNX teacher needs onnxruntime (pip install -e '.[onnx]')")


def brightness_model(path: Path, side: int = 64, gain: float = 8.0, sigmoid: bool = True) -> Path:
    """A 'salient-object model' in ONNX: sigmoid(gain x the sum of the normalised channels), a fixed side.

    With ISNet's normalisation (x / 255 - 0.5) a bright pixel gives a high probability and a dark one a low one,
    so the blob images of ``tests.factories`` come out as their ellipse."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), gain, np.float32), "weight")
    nodes = [helper.make_node("Conv", ["input", "weight"], ["logit" if sigmoid else "output"])]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logit"], ["output"]))
    graph = helper.make_graph(
        nodes, "brightness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, side, side])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six blob photos of two 'breeds' and one corrupt file."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        image, _ = blob_image(60 + 4 * i, 50, seed=i)
        Image.fromarray(image).save(folder / f"{'beagle' if i % 2 else 'Persian'}_{i}.jpg", quality=95)
    (folder / "broken_9.jpg").write_bytes(b"not a jpeg at all")
    return folder


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return brightness_model(tmp_path_factory.mktemp("teacher") / "bright.onnx")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def label(photos: Path, teacher: Path, out: Path, *extra: str) -> int:
    return main([str(photos), "--onnx", str(teacher), "--out", str(out), "--teacher-runtime", "onnxruntime",
                 *extra])


def test_each_photo_gets_a_probability_png_at_its_size_and_the_record_names_the_teacher(
        photos: Path, teacher_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels"
    assert label(photos, teacher_file, out) == 0
    for i in range(6):
        name = f"{'beagle' if i % 2 else 'Persian'}_{i}"
        levels = np.asarray(Image.open(out / f"{name}.png"))
        image, trimap = blob_image(60 + 4 * i, 50, seed=i)
        assert levels.shape == image.shape[:2] and levels.dtype == np.uint8
        assert dice(levels > 127, trimap != 2) > 0.9  # the bright ellipse, at the photo's size
        assert 0 < np.count_nonzero((levels > 0) & (levels < 255))  # soft, not a thresholded mask
    record = json.loads((out / RECORD_NAME).read_text())["teacher"]
    assert record["kind"] == "onnx-saliency" and record["file"] == "bright.onnx"
    assert len(record["sha256"]) == 64 and record["adapter"]["size"] == 64
    assert record["adapter"]["mean"] == [0.5, 0.5, 0.5]
    # the broken photo is named and skipped, the rest labelled, exit 0
    assert (out / "unreadable.txt").read_text().strip().endswith("broken_9.jpg")
    assert not (out / "broken_9.png").exists()
    assert "labelled 6 photo(s)" in capsys.readouterr().out


def test_a_second_run_skips_what_is_done_and_labels_only_what_is_missing(
        photos: Path, teacher_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels"
    assert label(photos, teacher_file, out) == 0
    (out / "beagle_1.png").unlink()
    kept = out / "Persian_0.png"
    os.utime(kept, (1_000_000, 1_000_000))
    capsys.readouterr()
    assert label(photos, teacher_file, out) == 0
    assert "labelled 1 photo(s)" in capsys.readouterr().out
    assert (out / "beagle_1.png").exists() and kept.stat().st_mtime == 1_000_000


def test_labels_of_another_teacher_are_not_mixed_in(photos: Path, teacher_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels"
    assert label(photos, teacher_file, out, "--limit", "2") == 0
    other = brightness_model(tmp_path / "other.onnx", gain=2.0)
    capsys.readouterr()
    assert label(photos, other, out) == 2
    assert "another teacher" in capsys.readouterr().err
    assert label(photos, other, out, "--overwrite") == 0
    assert json.loads((out / RECORD_NAME).read_text())["teacher"]["sha256"] != ""


def test_shards_split_the_photos_between_processes_and_together_label_each_once(
        photos: Path, teacher_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    seen = []
    for index in range(2):
        before = {p.name for p in out.glob("*.png")} if out.exists() else set()
        assert label(photos, teacher_file, out, "--shard", f"{index}/2") == 0
        seen.append({p.name for p in out.glob("*.png")} - before)
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 6


def test_without_a_teacher_or_with_a_bad_value_the_cli_says_so(photos: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(photos), "--out", str(tmp_path / "x")]) == 2
    assert "no teacher" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(photos), "--out", str(tmp_path / "x"), "--onnx", "m.onnx", "--veto-below", "1.5"])
    assert exc.value.code == 2
    assert main([str(photos), "--out", str(tmp_path / "x"), "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "teacher model not found" in capsys.readouterr().err


def test_a_partial_run_covers_every_breed_not_the_first_ones_alphabetically() -> None:
    names = [f"{breed}_{i}" for breed in ("Abyssinian", "beagle", "pug", "Sphynx") for i in range(50)]
    first = label_order(names)[:40]
    assert {n.rsplit("_", 1)[0] for n in first} == {"Abyssinian", "beagle", "pug", "Sphynx"}
    assert label_order(list(reversed(names))) == label_order(names)  # the same order whatever the listing


def test_png_levels_round_to_the_nearest_of_256() -> None:
    assert to_png_levels(np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.999])).tolist() == [0, 128, 255, 255, 0, 255]


def test_the_adapter_reads_logits_and_min_max_outputs() -> None:
    raw = np.array([[[[-2.0, 0.0], [2.0, 4.0]]]], np.float32)
    assert OnnxAdapter(output="logits").to_probability(raw, 2, 2)[0, 1] == pytest.approx(0.5)
    stretched = OnnxAdapter(output="minmax").to_probability(raw, 2, 2)
    assert stretched.min() == pytest.approx(0.0) and stretched.max() == pytest.approx(1.0)
    assert stretched[0, 1] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="output kind"):
        OnnxAdapter(output="percent")


def test_the_adapter_normalises_with_its_mean_and_std() -> None:
    image = np.full((4, 4, 3), 255, np.uint8)
    x = OnnxAdapter(mean=(0.5, 0.25, 0.0), std=(1.0, 0.5, 2.0)).to_input(image, 8)
    assert x.shape == (1, 3, 8, 8)
    assert x[0, :, 0, 0].tolist() == pytest.approx([0.5, 1.5, 0.5])


def test_a_logit_model_through_the_logits_adapter_equals_the_sigmoid_model(teacher_file: Path,
                                                                           tmp_path: Path) -> None:
    image, _ = blob_image(50, 40, seed=3)
    plain = OnnxSaliencyTeacher(teacher_file, runtime="onnxruntime").probabilities(image)
    logits = brightness_model(tmp_path / "logits.onnx", sigmoid=False)
    via_logits = OnnxSaliencyTeacher(logits, OnnxAdapter(output="logits"), runtime="onnxruntime")
    assert np.abs(via_logits.probabilities(image) - plain).max() < 1e-5


def test_openvino_and_onnxruntime_give_the_same_labels(teacher_file: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")
    image, _ = blob_image(50, 40, seed=4)
    ort = OnnxSaliencyTeacher(teacher_file, runtime="onnxruntime")
    ov = OnnxSaliencyTeacher(teacher_file, runtime="openvino")
    assert ov.runtime == "openvino"
    assert np.abs(ov.probabilities(image) - ort.probabilities(image)).max() < 1e-3


def test_openvino_leaves_the_thread_unpinned_so_one_thread_shards_use_every_core(
        teacher_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned, the inferring thread of every process sits on core 0: two ``--threads 1`` shards share one core."""
    openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")
    configs: list[dict] = []

    class RecordingCore(openvino.Core):
        def compile_model(self, model: object, device: str, config: dict) -> object:
            configs.append(dict(config))
            return super().compile_model(model, device, config)

    monkeypatch.setattr(openvino, "Core", RecordingCore)
    OnnxSaliencyTeacher(teacher_file, runtime="openvino", threads=1)
    assert configs == [{"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False, "INFERENCE_NUM_THREADS": 1}]


def test_openvino_is_refused_at_a_side_other_than_the_models_own(teacher_file: Path) -> None:
    with pytest.raises(ValueError, match="its own side 64"):
        OnnxSaliencyTeacher(teacher_file, OnnxAdapter(size=96), runtime="openvino")
    auto = OnnxSaliencyTeacher(teacher_file, OnnxAdapter(size=96), runtime="auto")
    assert auto.runtime == "onnxruntime" and auto.side == 96


def test_the_pet_model_vetoes_a_salient_region_it_does_not_believe_in() -> None:
    outline = np.zeros((20, 40), np.float32)
    outline[5:15, 2:12] = 0.9    # the pet
    outline[5:15, 25:38] = 0.95  # the cushion beside it
    judge = np.zeros_like(outline)
    judge[4:16, 1:13] = 0.8
    vetoed = veto_regions(outline, judge, veto_below=0.2)
    assert vetoed[10, 5] == pytest.approx(0.9) and vetoed[10, 30] == 0.0
    assert veto_regions(outline, np.ones_like(outline), 0.2).tolist() == outline.tolist()


def test_a_checkpoint_ensemble_with_flips_is_a_teacher(tiny_checkpoint: Path, teacher_file: Path) -> None:
    image, _ = blob_image(50, 40, seed=5)
    single = CheckpointTeacher([tiny_checkpoint])
    flipped = CheckpointTeacher([tiny_checkpoint, tiny_checkpoint], flip=True)
    prob = single.probabilities(image)
    assert prob.shape == (40, 50) and 0.0 <= prob.min() and prob.max() <= 1.0
    mirrored = single.probabilities(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
    assert np.abs(flipped.probabilities(image) - (prob + mirrored) / 2).max() < 1e-4
    record = flipped.record()
    assert record["flip"] is True and len(record["checkpoints"]) == 2
    vetoed = VetoedTeacher(OnnxSaliencyTeacher(teacher_file, runtime="onnxruntime"), single, 0.2).record()
    assert vetoed["kind"] == "vetoed" and vetoed["judge"]["kind"] == "petseg-checkpoint"


def test_an_unreadable_teacher_or_an_out_under_a_file_is_one_line_and_leaves_nothing(
        photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    assert main([str(photos), "--onnx", str(broken), "--out", str(tmp_path / "labels")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "labels").exists()
    assert main([str(photos), "--onnx", str(broken), "--out", str(broken / "labels")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
