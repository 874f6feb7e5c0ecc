"""``--ema``: a moving average of the weights is validated and saved, and survives a resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoint import load_checkpoint
from tests.training._runs import train
from training.ema import WeightAverage
from training.train import main

slow = pytest.mark.slow  # trains: several seconds on a 2-core CPU
ONE_STEP_EPOCHS = ["-n", "unet", "-lr", "3e-3", "--ema", "0.5"]  # 8 images in batches of 8: one step per epoch


def float_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in state.items() if v.is_floating_point()}


def assert_is_mix(average: dict, first: dict, second: dict, decay: float) -> None:
    """Two steps average to decay * first + (1 - decay) * second, parameters and BatchNorm statistics alike."""
    average, first, second = float_tensors(average), float_tensors(first), float_tensors(second)
    assert average.keys() == first.keys() == second.keys()
    for name, value in average.items():
        torch.testing.assert_close(value, decay * first[name] + (1 - decay) * second[name], rtol=1e-5, atol=1e-6,
                                   msg=name)


WARMED_SECOND_STEP = 2 / 11  # the warm-up's decay for the second step: min(0.5, (1 + 1) / (10 + 1))


def test_the_first_update_copies_and_later_ones_move_by_one_minus_decay() -> None:
    model = nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.75, warmup=False)
    with torch.no_grad():
        model.weight.fill_(4.0)
    average.update(model)
    with torch.no_grad():
        model.weight.fill_(8.0)
    average.update(model)
    assert average.updates == 2
    assert torch.allclose(average.module.weight, torch.full((1, 2), 0.75 * 4.0 + 0.25 * 8.0))
    assert torch.equal(model.weight, torch.full((1, 2), 8.0))  # the trained model is left alone


def test_restore_puts_back_the_weights_and_the_count() -> None:
    model = nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.5)
    saved = {k: torch.full_like(v, 3.0) for k, v in model.state_dict().items()}
    average.restore(saved, updates=7, warmup=False)
    assert average.updates == 7 and torch.equal(average.module.weight, saved["weight"]) and not average.warmup
    with torch.no_grad():
        model.weight.fill_(5.0)
    average.update(model)  # not a copy: 7 updates are already folded in
    assert torch.allclose(average.module.weight, torch.full((1, 2), 4.0))


def test_the_warm_up_shortens_the_memory_early_and_reaches_the_decay() -> None:
    average = WeightAverage(nn.Linear(1, 1), decay=0.9)
    assert average.decay_at(1) == pytest.approx(2 / 11) and average.decay_at(10) == pytest.approx(11 / 20)
    assert average.decay_at(80) == pytest.approx(0.9) and average.decay_at(10_000) == 0.9
    assert WeightAverage(nn.Linear(1, 1), decay=0.9, warmup=False).decay_at(1) == 0.9


def test_a_short_run_is_not_held_back_by_its_first_weights_with_the_warm_up() -> None:
    """300 steps at decay 0.999: a fixed decay keeps 74% of the starting weights, the warm-up about 3%."""
    ends = {}
    for warmup in (True, False):
        model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        average = WeightAverage(model, decay=0.999, warmup=warmup)
        average.update(model)  # the start
        with torch.no_grad():
            model.weight.fill_(1.0)  # where training went
        for _ in range(300):
            average.update(model)
        ends[warmup] = average.module.weight.item()
    assert ends[False] == pytest.approx(1 - 0.999**300) and ends[False] < 0.3
    assert ends[True] > 0.96


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_weight_average_refuses_a_decay_outside_0_1(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(1, 1), decay)


@pytest.mark.parametrize("value", ["1", "1.5", "-0.2"])
def test_the_cli_refuses_a_decay_outside_0_1_with_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--ema", value])
    assert exit_info.value.code == 2
    assert "--ema" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ema_epochs(pets30: Path, module_tmp_path: Path) -> list[Path]:
    """Epoch 1 of an ``--ema 0.5`` run, then the same run resumed to epoch 2: one checkpoint per epoch."""
    out = module_tmp_path / "ema" / "run"
    assert train(pets30, out, *ONE_STEP_EPOCHS, "-e", "1") == 0
    first = out.parent / "epoch1.pt"
    first.write_bytes((out / "last.pt").read_bytes())
    assert train(pets30, out, *ONE_STEP_EPOCHS, "-e", "2", "--model", "last") == 0
    return [first, out / "last.pt"]


@slow
def test_the_checkpoint_holds_the_average_and_the_trained_weights_beside_it(ema_epochs: list[Path]) -> None:
    first, second = (load_checkpoint(p) for p in ema_epochs)
    assert (first.training_state["ema_updates"], first.training_state["ema_decay"]) == (1, 0.5)
    assert first.training_state["ema_warmup"] is True
    # after one step the average is a copy of the trained weights
    assert_is_mix(first.model_state, first.training_state["live_model"], first.training_state["live_model"], 0.5)
    assert second.training_state["ema_updates"] == 2
    average, trained = float_tensors(second.model_state), float_tensors(second.training_state["live_model"])
    assert any(not torch.equal(average[k], trained[k]) for k in average)


@slow
def test_after_a_resume_the_average_goes_on_from_where_it_was(ema_epochs: list[Path]) -> None:
    """The second step, after a resume, is the warm-up's second step: decay 2/11, not the fixed 0.5."""
    first, second = (load_checkpoint(p) for p in ema_epochs)
    assert_is_mix(second.model_state, first.training_state["live_model"], second.training_state["live_model"],
                  WARMED_SECOND_STEP)


@slow
def test_a_run_saved_without_the_warm_up_goes_on_without_it(ema_epochs: list[Path], pets30: Path,
                                                            tmp_path: Path) -> None:
    """Checkpoints from before the warm-up hold no ``ema_warmup``: their runs resume with the fixed decay."""
    from models.checkpoint import save_checkpoint

    first = load_checkpoint(ema_epochs[0])
    del first.training_state["ema_warmup"]
    out = tmp_path / "run"
    save_checkpoint(first, out / "last.pt")
    assert train(pets30, out, *ONE_STEP_EPOCHS, "-e", "2", "--model", "last") == 0
    second = load_checkpoint(out / "last.pt")
    assert second.training_state["ema_warmup"] is False and second.config["ema_warmup"] is False
    assert_is_mix(second.model_state, first.training_state["live_model"], second.training_state["live_model"], 0.5)


def test_no_ema_warmup_reaches_the_run_config() -> None:
    from training.train import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--ema", "0.99"])).ema_warmup is True
    assert config_from_args(build_parser().parse_args(["--ema", "0.99", "--no-ema-warmup"])).ema_warmup is False


def valid_dice(state: dict[str, torch.Tensor], pets30: Path) -> float:
    """Dice over the valid split at the run's 32 px, as ``fit`` measures it each epoch."""
    from models import build_model
    from training.data import PetDataset
    from training.loop import StepContext, evaluate_epoch
    from training.losses import BCEDiceLoss
    from training.transforms import build_transform

    model = build_model("unet")
    model.load_state_dict(state)
    data = PetDataset(pets30, "valid", build_transform("none", 32), image_size=32, progress=False)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    ctx = StepContext(torch.device("cpu"), "fp32", False, BCEDiceLoss(), progress=False)
    return evaluate_epoch(model, loader, ctx).metrics.summary()["dice"]


@slow
def test_the_history_keeps_the_trained_weights_valid_dice_beside_the_averages(ema_epochs: list[Path],
                                                                             pets30: Path) -> None:
    second = load_checkpoint(ema_epochs[1])
    history = second.training_state["history"]
    assert len(history["val_dice_trained"]) == len(history["val_dice"]) == 2
    assert history["val_dice_trained"][-1] == pytest.approx(
        valid_dice(second.training_state["live_model"], pets30), abs=1e-6)


@slow
def test_the_logged_valid_dice_is_the_averages(ema_epochs: list[Path], pets30: Path) -> None:
    second = load_checkpoint(ema_epochs[1])
    logged = second.training_state["history"]["val_dice"][-1]
    assert second.metrics["val_dice"] == logged and second.config["ema_decay"] == 0.5
    assert valid_dice(second.model_state, pets30) == pytest.approx(logged, abs=1e-6)


@slow
def test_resuming_with_ema_0_goes_on_from_the_trained_weights_and_says_so(
    ema_epochs: list[Path], pets30: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A resumed run keeps its average unless told otherwise (``--ema 0``): then the average is dropped."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(ema_epochs[0].read_bytes())
    with caplog.at_level(logging.WARNING, logger="training.fit"):
        assert train(pets30, out, "-n", "unet", "-lr", "3e-3", "-e", "2", "--ema", "0", "--model", "last") == 0
    assert "drops the average" in caplog.text
    resumed = load_checkpoint(out / "last.pt")
    assert "live_model" not in resumed.training_state
