"""One training epoch and one evaluation pass, step by step, on a one-layer model and batches the test writes:
the order of backward, clipping and stepping, the per-image loss, the per-source losses, the schedule, the
weight average, the layout, and the metrics with their ignored pixels."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.images import MASK_IGNORE
from training.loop import EpochResult, StepContext, evaluate_epoch, train_one_epoch


class SumOfLogits(nn.Module):
    """A loss whose value the test can compute by hand: the mean logit (masks unused)."""

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return logits.float().mean()


def batch(names: list[str], value: float = 1.0, source: list[int] | None = None, side: int = 4) -> dict:
    images = torch.full((len(names), 3, side, side), value)
    masks = torch.zeros((len(names), 1, side, side))  # as training.data gives them: float (1, H, W)
    masks[:, :, : side // 2] = 1
    item = {"image": images, "mask": masks, "name": names}
    if source is not None:
        item["source"] = torch.tensor(source)
    return item


def one_layer(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(3, 1, 1)


def context(model: nn.Module, **overrides: object) -> StepContext:
    settings = {"device": torch.device("cpu"), "precision": "fp32", "channels_last": False,
                "criterion": SumOfLogits(), "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
                "progress": False, **overrides}
    return StepContext(**settings)  # type: ignore[arg-type]


def test_training_needs_an_optimizer() -> None:
    model = one_layer()
    with pytest.raises(AssertionError, match="^training needs an optimizer$"):
        train_one_epoch(model, [batch(["a_1"])], context(model, optimizer=None))


def test_the_epoch_loss_is_the_mean_per_image_not_per_batch() -> None:
    model = one_layer()
    model.weight.data.zero_()
    model.bias.data.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no step changes the loss
    with torch.no_grad():
        model.bias.fill_(1.0)
    result = train_one_epoch(model, [batch(["a_1", "a_2", "a_3"]), batch(["b_1"])], context(model, optimizer=optimizer))
    assert result.loss == pytest.approx(1.0)
    model.bias.data.fill_(0.0)
    model.weight.data.fill_(1 / 3)  # logit = the pixel value: 1 in the first batch, 4 in the second
    result = train_one_epoch(model, [batch(["a_1", "a_2", "a_3"]), batch(["b_1"], value=4.0)],
                             context(model, optimizer=optimizer))
    assert result.loss == pytest.approx((3 * 1.0 + 1 * 4.0) / 4)  # per batch it would be 2.5
    assert result.metrics.names == ["a_1", "a_2", "a_3", "b_1"] and model.training


def test_gradients_are_clipped_after_backward_and_before_the_step() -> None:
    seen: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001, ANN201
            seen.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
            return super().step(closure)

    model = one_layer()
    optimizer = Recording(model.parameters(), lr=0.01)
    train_one_epoch(model, [batch(["a_1"], value=50.0)] * 2, context(model, optimizer=optimizer, clip_grad_norm=0.5))
    assert seen == [pytest.approx(0.5), pytest.approx(0.5)]
    seen.clear()
    train_one_epoch(model, [batch(["a_1"], value=50.0)], context(model, optimizer=optimizer, clip_grad_norm=0.0))
    assert seen[0] > 1.0  # 0 turns clipping off


def test_gradients_do_not_pile_up_across_steps() -> None:
    norms: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001, ANN201
            norms.append(float(model.bias.grad.abs().sum()))
            return None  # no update: every step sees the same gradient unless they add up

    model = one_layer()
    train_one_epoch(model, [batch(["a_1"])] * 3, context(model, optimizer=Recording(model.parameters(), lr=1.0)))
    assert norms == [pytest.approx(norms[0])] * 3


def test_a_grad_scaler_scales_backward_and_is_unscaled_before_clipping() -> None:
    calls: list[str] = []

    class Scaler:
        def scale(self, loss: torch.Tensor) -> torch.Tensor:
            calls.append("scale")
            return loss * 1024

        def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
            calls.append(f"unscale {float(model.bias.grad.abs().sum()):.0f}")
            for p in model.parameters():
                p.grad /= 1024

        def step(self, optimizer: torch.optim.Optimizer) -> None:
            calls.append(f"step {float(model.bias.grad.abs().sum()):.3f}")
            optimizer.step()

        def update(self) -> None:
            calls.append("update")

    model = one_layer()
    train_one_epoch(model, [batch(["a_1"])], context(model, scaler=Scaler(), clip_grad_norm=100.0))
    assert calls == ["scale", "unscale 1024", "step 1.000", "update"]  # d(mean logit)/d(bias) = 1


def test_the_schedule_and_the_weight_average_move_once_a_step() -> None:
    steps: list[str] = []

    class Average:
        def update(self, model: nn.Module) -> None:
            steps.append(type(model).__name__)

    class Wrapped(nn.Module):  # as DistributedDataParallel holds the network: the average takes the inner one
        def __init__(self) -> None:
            super().__init__()
            self.module = one_layer()

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.module(images)

    model = Wrapped()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    train_one_epoch(model, [batch(["a_1"])] * 3,
                    context(model, optimizer=optimizer, scheduler=scheduler, weight_average=Average()))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125) and steps == ["Conv2d"] * 3


def test_each_source_gets_its_own_mean_loss_and_its_weight() -> None:
    model = one_layer()
    model.weight.data.fill_(1 / 3)
    model.bias.data.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = [batch(["a_1", "b_1"], source=[0, 1]), batch(["b_2", "b_3"], value=4.0, source=[1, 1])]
    loader[0]["image"][1] = 2.0  # image b_1: logit 2
    result = train_one_epoch(model, loader, context(model, optimizer=optimizer, source_weights={1: 0.5}))
    assert result.source_losses == {0: pytest.approx(1.0), 1: pytest.approx((2.0 + 2 * 4.0) / 3)}  # per image
    # batch 1: (1 x 1 + 0.5 x 2) / (1 + 0.5) = 4 / 3; batch 2: 4 (one source alone); per image: (2 x 4/3 + 2 x 4) / 4
    assert result.loss == pytest.approx((2 * 4 / 3 + 2 * 4) / 4)
    plain = train_one_epoch(model, [batch(["a_1"])], context(model, optimizer=optimizer))
    assert plain.source_losses == {}


def test_images_go_channels_last_when_asked() -> None:
    layouts: list[bool] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = one_layer()

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            layouts.append(images.is_contiguous(memory_format=torch.channels_last)
                           and not images.is_contiguous())
            return self.conv(images)

    model = Probe()
    train_one_epoch(model, [batch(["a_1", "a_2"])], context(model, channels_last=True))
    evaluate_epoch(model, [batch(["a_1", "a_2"])], context(model, channels_last=False))
    assert layouts == [True, False]


def test_metrics_leave_the_ignored_pixels_out_in_training_and_evaluation() -> None:
    model = one_layer()
    model.weight.data.zero_()
    model.bias.data.fill_(1.0)  # predicts pet everywhere
    item = batch(["a_1"])
    item["mask"][:, :, 2:] = MASK_IGNORE  # the bottom half: neither pet nor background
    trained = train_one_epoch(model, [item], context(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0)))
    evaluated = evaluate_epoch(model, [item], context(model))
    assert trained.metrics.dice == [pytest.approx(1.0)] and evaluated.metrics.dice == [pytest.approx(1.0)]
    item["mask"][:, :, 2:] = 0
    assert evaluate_epoch(model, [item], context(model)).metrics.dice == [pytest.approx(2 * 8 / (16 + 8))]


def test_evaluation_switches_to_eval_mode_and_averages_per_image() -> None:
    model = nn.Sequential(one_layer(), nn.Dropout(p=0.9))
    model[0].weight.data.fill_(1 / 3)
    model[0].bias.data.zero_()
    result = evaluate_epoch(model, [batch(["a_1", "a_2", "a_3"]), batch(["b_1"], value=4.0)], context(model))
    assert not model.training and result.loss == pytest.approx((3 + 4) / 4)  # no dropout: the exact logits
    assert result.metrics.names == ["a_1", "a_2", "a_3", "b_1"] and result.source_losses == {}
    assert evaluate_epoch(model, [], context(model)).loss == 0.0


def test_a_reducer_gets_the_epochs_result() -> None:
    model = one_layer()
    reduced = EpochResult(9.0, None)  # type: ignore[arg-type]
    assert train_one_epoch(model, [batch(["a_1"])], context(model), reduce=lambda result: reduced) is reduced
    assert evaluate_epoch(model, [batch(["a_1"])], context(model), reduce=lambda result: reduced) is reduced


def test_the_progress_bar_says_which_pass_it_is(capsys: pytest.CaptureFixture) -> None:
    model = one_layer()
    train_one_epoch(model, [batch(["a_1"])] * 2, context(model, progress=True), desc="epoch 3")
    evaluate_epoch(model, [batch(["a_1"])], context(model, progress=True))
    err = capsys.readouterr().err
    assert "epoch 3" in err and "valid" in err and "batch" in err and "loss=" in err
    train_one_epoch(model, [batch(["a_1"])], context(model))
    assert capsys.readouterr().err == ""
