"""Checkpoint files: round trip, atomic writes, safe loading, clear refusals."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from models import build_model
from models.checkpoint import (
    CHECKPOINT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Checkpoint,
    CheckpointError,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from models.engine.segmenter import Segmenter
from tests.factories import make_checkpoint


def small_checkpoint(epoch: int = 3) -> Checkpoint:
    """Metadata of a real run around a few tensors: the file format does not care how big the model is."""
    torch.manual_seed(1)
    state = {"inc.weight": torch.randn(4, 3, 3, 3), "inc.bn.num_batches_tracked": torch.tensor(7)}
    return Checkpoint(
        arch="unet",
        model_state=state,
        image_size=48,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        border_is_pet=False,
        epoch=epoch,
        metrics={"val_dice": 0.7},
        config={"lr": 1e-3, "seed": 5},
        training_state={"best_epoch": 2},
        card={"machine": "test"},
    )


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    original = small_checkpoint()
    loaded = load_checkpoint(save_checkpoint(original, tmp_path / "c.pt"))
    assert (loaded.arch, loaded.image_size, loaded.epoch, loaded.border_is_pet) == ("unet", 48, 3, False)
    assert (loaded.mean, loaded.std) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert loaded.metrics == {"val_dice": 0.7} and loaded.config == {"lr": 1e-3, "seed": 5}
    assert loaded.created_at == original.created_at and loaded.created_at.endswith("+00:00")
    assert loaded.training_state == {"best_epoch": 2} and loaded.card == {"machine": "test"}
    assert loaded.model_state.keys() == original.model_state.keys()
    assert all(torch.equal(loaded.model_state[k], v) for k, v in original.model_state.items())


def test_checkpoint_is_a_plain_dict_readable_with_weights_only(tmp_path: Path) -> None:
    raw = torch.load(save_checkpoint(small_checkpoint(), tmp_path / "c.pt"), weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT
    assert raw["normalization"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


def test_checkpoint_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_checkpoint(small_checkpoint(), tmp_path / "c.pt")
    save_checkpoint(small_checkpoint(epoch=4), tmp_path / "c.pt")  # overwrite too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert load_checkpoint(tmp_path / "c.pt").epoch == 4


def test_checkpoint_save_creates_missing_folders(tmp_path: Path) -> None:
    assert load_checkpoint(save_checkpoint(small_checkpoint(), tmp_path / "a" / "b" / "c.pt")).epoch == 3


def test_checkpoint_failed_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(small_checkpoint(epoch=1), tmp_path / "c.pt")
    before = path.read_bytes()

    def crash(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(small_checkpoint(epoch=2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


class _SystemCall:
    """Pickles as ``os.system(command)``: run on load by any unpickler that executes code."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class _CustomObject:
    """A harmless class that is still not a tensor nor a plain value."""

    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize("kind", ["os.system", "custom-class"])
def test_checkpoint_with_pickled_code_is_refused_and_not_run(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = _SystemCall(f"touch {marker}") if kind == "os.system" else _CustomObject()
    raw = small_checkpoint().to_dict()
    raw["card"] = {"note": payload}  # hidden deep inside an otherwise valid checkpoint
    path = tmp_path / "evil.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_for_another_arch_is_refused_naming_both(tmp_path: Path) -> None:
    path = save_checkpoint(small_checkpoint(), tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, expected_arch="ResNet34_UNet")
    assert "'unet'" in str(error.value) and "'resnet34_unet'" in str(error.value)


def test_checkpoint_expected_arch_accepts_aliases(tmp_path: Path) -> None:
    path = save_checkpoint(small_checkpoint(), tmp_path / "c.pt")
    assert load_checkpoint(path, expected_arch="UNet").arch == "unet"


def test_checkpoint_weights_that_do_not_fit_the_arch_are_refused(tmp_path: Path) -> None:
    checkpoint = small_checkpoint()
    checkpoint.arch = "resnet34_unet"
    with pytest.raises(CheckpointError, match="do not fit architecture 'resnet34_unet'"):
        load_checkpoint(save_checkpoint(checkpoint, tmp_path / "c.pt")).build_model()


def test_checkpoint_with_an_unknown_arch_is_refused(tmp_path: Path) -> None:
    raw = small_checkpoint().to_dict()
    raw["arch"] = "segformer"
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize(
    "content",
    [
        {"model_state_dict": {}},  # the report's format
        {"format": "petseg-checkpoint/999", "arch": "unet", "model_state": {}, "image_size": 32},
        [1, 2, 3],
    ],
    ids=["report-format", "future-format", "a-list"],
)
def test_checkpoint_foreign_content_is_refused(tmp_path: Path, content: object) -> None:
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a petseg checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_checkpoint_missing_fields_are_refused(tmp_path: Path) -> None:
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "unet"}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(tmp_path / "x.pt")


@pytest.mark.parametrize(
    "content", [b"\x00garbage that is not a zip or a pickle", b""], ids=["garbage", "empty"]
)
def test_checkpoint_unreadable_bytes_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_checkpoint_truncated_file_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(small_checkpoint(), tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_checkpoint_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path)


class RealModel(NamedTuple):
    full: Path
    half: Path
    inputs: torch.Tensor
    logits: torch.Tensor  # of the model before it was saved


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> RealModel:
    folder = tmp_path_factory.mktemp("half")
    torch.manual_seed(2)
    model = build_model("unet").eval()
    inputs = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        logits = model(inputs)
    full = save_checkpoint(
        Checkpoint(
            "unet", model.state_dict(), image_size=32, epoch=5, training_state={"optimizer": {"state": {}}}
        ),
        folder / "full.pt",
    )
    half = save_checkpoint(load_checkpoint(full).half(), folder / "half.pt")
    return RealModel(full, half, inputs, logits)


def test_checkpoint_of_a_real_model_rebuilds_the_same_model(real_model: RealModel) -> None:
    rebuilt = load_checkpoint(real_model.full, expected_arch="UNet").build_model().eval()
    with torch.inference_mode():
        assert torch.equal(rebuilt(real_model.inputs), real_model.logits)


def test_checkpoint_half_halves_the_file(real_model: RealModel) -> None:
    full, half = real_model.full.stat().st_size, real_model.half.stat().st_size
    assert 0.45 * full < half < 0.55 * full


def test_checkpoint_half_keeps_metadata_and_drops_training_state(real_model: RealModel) -> None:
    half = load_checkpoint(real_model.half)
    assert (half.arch, half.epoch, half.image_size, half.training_state) == ("unet", 5, 32, None)
    assert all(v.dtype == torch.float16 for v in half.model_state.values() if v.is_floating_point())
    assert half.model_state["inc.block.1.num_batches_tracked"].dtype == torch.int64  # integers untouched


def test_checkpoint_half_builds_a_model_that_predicts_like_fp32(real_model: RealModel) -> None:
    model = load_checkpoint(real_model.half).build_model().eval()
    assert next(model.parameters()).dtype == torch.float32  # cast back up for the CPU
    with torch.inference_mode():
        logits = model(real_model.inputs)
    assert torch.allclose(logits, real_model.logits, atol=0.05, rtol=0.05)
    assert ((logits > 0) != (real_model.logits > 0)).float().mean() < 0.005


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("untrained") / "random.pt", epoch=0, image_size=32)


def test_segmenter_refuses_an_untrained_checkpoint(untrained: Path) -> None:
    with pytest.raises(CheckpointError, match="untrained"):
        Segmenter.from_file(untrained, device="cpu")


def test_segmenter_loads_an_untrained_checkpoint_when_allowed(untrained: Path) -> None:
    segmenter = Segmenter.from_file(untrained, device="cpu", precision="fp32", allow_untrained=True)
    assert segmenter.info.epoch == 0 and segmenter.info.checkpoint_path == str(untrained)


# --- digests and messages (found loose by mutation testing) ------------------------------------------------

def test_weights_digest_is_the_sha256_of_arch_size_and_fp32_weights_in_name_order() -> None:
    state = {"b.weight": torch.tensor([1.0, 2.0]), "a.count": torch.tensor([3], dtype=torch.int64)}
    checkpoint = Checkpoint(arch="unet", model_state=state, image_size=64)
    expected = hashlib.sha256(b"unet:64")
    expected.update(b"a.count" + torch.tensor([3.0]).numpy().tobytes())
    expected.update(b"b.weight" + torch.tensor([1.0, 2.0]).numpy().tobytes())
    assert checkpoint.weights_digest() == expected.hexdigest()


def test_weights_digest_ignores_the_card_and_follows_each_weight_and_the_input_size() -> None:
    base = small_checkpoint()
    same = small_checkpoint()
    same.card, same.metrics, same.int8_calibration = {"other": "card"}, {}, {"x": "1"}
    assert same.weights_digest() == base.weights_digest()
    moved = small_checkpoint()
    moved.model_state["inc.weight"][0, 0, 0, 0] += 1e-3
    resized = small_checkpoint()
    resized.image_size = 64
    assert len({base.weights_digest(), moved.weights_digest(), resized.weights_digest()}) == 3


def test_file_sha256_reads_a_file_larger_than_its_chunk(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 123)
    (tmp_path / "big.bin").write_bytes(data)
    assert file_sha256(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()


def test_a_refusal_quotes_only_the_first_line_of_torchs_error(tmp_path: Path) -> None:
    checkpoint = small_checkpoint()
    checkpoint.arch = "resnet34_unet"
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(save_checkpoint(checkpoint, tmp_path / "c.pt")).build_model()
    assert str(error.value) == ("weights do not fit architecture 'resnet34_unet': "
                                "Error(s) in loading state_dict for ResNet34UNet:")


def test_an_empty_file_is_refused_with_the_errors_name_when_torch_gives_no_text(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "empty.pt")
    assert str(error.value) == f"cannot read checkpoint {tmp_path / 'empty.pt'}: EOFError"  # torch's is blank


def test_a_text_file_is_refused_as_not_a_checkpoint_not_with_torchs_magic_number(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("junk\n")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "notes.pt")
    assert str(error.value) == f"cannot read checkpoint {tmp_path / 'notes.pt'}: not a PyTorch checkpoint file"


def test_half_makes_floats_fp16_keeps_integers_and_leaves_the_original_alone() -> None:
    original = small_checkpoint()
    half = original.half()
    assert half.model_state["inc.weight"].dtype == torch.float16
    assert half.model_state["inc.bn.num_batches_tracked"].dtype == torch.int64
    weights = original.model_state["inc.weight"]
    assert torch.allclose(half.model_state["inc.weight"].float(), weights, atol=1e-2)
    assert half.training_state is None and half.card == original.card and half.epoch == original.epoch
    assert original.model_state["inc.weight"].dtype == torch.float32 and original.training_state is not None


def test_a_checkpoint_with_only_the_required_fields_loads_with_the_defaults(tmp_path: Path) -> None:
    """Files written before the optional fields existed still load, with the values those files meant."""
    state = small_checkpoint().model_state
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "unet", "model_state": state, "image_size": 1},
               tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert (loaded.mean, loaded.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (loaded.border_is_pet, loaded.epoch, loaded.created_at, loaded.image_size) == (True, 0, "", 1)
    assert (loaded.metrics, loaded.config, loaded.card, loaded.int8_calibration) == ({}, {}, {}, {})
    assert loaded.training_state is None


def test_int8_ranges_and_the_creation_time_survive_a_round_trip(tmp_path: Path) -> None:
    checkpoint = small_checkpoint()
    checkpoint.int8_calibration = {"ranges": "0.1,0.2"}
    loaded = load_checkpoint(save_checkpoint(checkpoint, tmp_path / "c.pt"))
    assert loaded.int8_calibration == {"ranges": "0.1,0.2"} and loaded.created_at == checkpoint.created_at


def test_an_input_size_under_one_is_refused_naming_the_file(tmp_path: Path) -> None:
    raw = small_checkpoint().to_dict()
    raw["image_size"] = 0
    torch.save(raw, tmp_path / "zero.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "zero.pt")
    assert str(error.value) == f"{tmp_path / 'zero.pt'} is malformed: image_size 0 must be >= 1"
    with pytest.raises(CheckpointError, match="^checkpoint is not a petseg checkpoint"):
        Checkpoint.from_dict({})  # no file: the message still says what was refused


def test_a_saved_checkpoint_is_synced_to_disk_with_its_folder(tmp_path: Path, fsyncs: list[str]) -> None:
    save_checkpoint(small_checkpoint(), tmp_path / "c.pt")
    assert fsyncs == ["file", "folder"]  # the file, then the folder that names it
