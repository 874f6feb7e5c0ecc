"""Dice and IoU against hand-computed values; split-level aggregation is per image, never per batch."""

from __future__ import annotations

import pytest
import torch

from training.metrics import SegmentationMetrics, breed_of, dice_score, iou_score


def masks(pred_on: list[int], target_on: list[int], n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """One image of ``n`` pixels: boolean (1, n) prediction and target with the given pixels on."""
    pred = torch.zeros(1, n, dtype=torch.bool)
    target = torch.zeros(1, n, dtype=torch.bool)
    pred[0, pred_on] = True
    target[0, target_on] = True
    return pred, target


@pytest.mark.parametrize(
    ("pred_on", "target_on", "dice", "iou"),
    [
        ([1, 2, 3], [1, 2, 3], 1.0, 1.0),
        ([0, 1], [5, 6, 7], 0.0, 0.0),
        ([0, 1, 2, 3], [1, 2, 3, 4, 5, 6], 6 / 10, 3 / 7),  # overlap 3, |P| 4, |T| 6
        ([], [], 1.0, 1.0),  # nothing to find, nothing found
        ([2], [], 0.0, 0.0),  # a false positive on an empty image
        ([], [2, 3], 0.0, 0.0),  # a miss
    ],
    ids=["perfect", "disjoint", "partial", "both-empty", "false-positive", "miss"],
)
def test_dice_and_iou_hand_computed(
    pred_on: list[int], target_on: list[int], dice: float, iou: float
) -> None:
    pred, target = masks(pred_on, target_on)
    assert dice_score(pred, target).item() == pytest.approx(dice)
    assert iou_score(pred, target).item() == pytest.approx(iou)


def test_dice_and_iou_are_per_image_over_any_shape() -> None:
    pred = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    target = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    pred[0, 0, :2] = True  # 8 px
    target[0, 0, 1:] = True  # 12 px, overlap 4
    assert dice_score(pred, target).tolist() == pytest.approx([8 / 20, 1.0])
    assert iou_score(pred, target).tolist() == pytest.approx([4 / 16, 1.0])


def test_dice_accepts_float_masks() -> None:
    pred = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert dice_score(pred, target).item() == pytest.approx(2 / 3)


def test_split_metrics_average_images_not_batches() -> None:
    metrics = SegmentationMetrics()
    perfect, _ = masks([1, 2], [1, 2])
    three = torch.cat([perfect, perfect, perfect])
    metrics.update(three, three)  # a batch of 3 images, Dice 1 each
    metrics.update(*masks([0], [9]))  # a batch of 1 image, Dice 0
    summary = metrics.summary()
    assert summary["dice"] == pytest.approx(3 / 4)  # the mean of the two batch means would be 0.5
    assert summary["iou"] == pytest.approx(3 / 4)
    assert summary["images"] == 4


def test_split_metrics_equal_the_per_image_mean_over_uneven_batches() -> None:
    torch.manual_seed(0)
    preds = torch.rand(7, 1, 6, 6) > 0.5
    targets = torch.rand(7, 1, 6, 6) > 0.4
    metrics = SegmentationMetrics()
    for start, stop in [(0, 2), (2, 3), (3, 7)]:
        metrics.update(preds[start:stop], targets[start:stop])
    summary = metrics.summary()
    assert summary["dice"] == pytest.approx(dice_score(preds, targets).mean().item())
    assert summary["iou"] == pytest.approx(iou_score(preds, targets).mean().item())
    inter = (preds & targets).sum().item()
    assert summary["dice_micro"] == pytest.approx(2 * inter / (preds.sum().item() + targets.sum().item()))
    assert summary["iou_micro"] == pytest.approx(inter / (preds | targets).sum().item())


def test_split_metrics_micro_pools_pixels() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([0, 1, 2, 3], [1, 2, 3, 4, 5, 6]))  # inter 3, |P| 4, |T| 6
    metrics.update(*masks([7], [7]))  # inter 1, |P| 1, |T| 1
    summary = metrics.summary()
    assert summary["dice_micro"] == pytest.approx(2 * 4 / (5 + 7))
    assert summary["iou_micro"] == pytest.approx(4 / (5 + 7 - 4))
    assert summary["dice"] == pytest.approx((6 / 10 + 1) / 2)  # differs from micro: both are reported


def test_split_metrics_of_nothing_are_nan() -> None:
    summary = SegmentationMetrics().summary()
    assert summary.pop("images") == 0
    assert set(summary) == {"dice", "iou", "dice_micro", "iou_micro"}
    assert all(value != value for value in summary.values())  # every score nan, none missing
    assert SegmentationMetrics().share_below(0.7) != SegmentationMetrics().share_below(0.7)


def test_iou_of_one_shared_pixel_is_one() -> None:
    assert iou_score(*masks([4], [4])).item() == 1.0
    assert dice_score(*masks([4], [4])).item() == 1.0


def test_ignored_pixels_count_for_neither_prediction_nor_target() -> None:
    """The trimap's border band: a prediction there is neither a hit nor a false alarm, a target pixel there
    is not a miss."""
    pred, target = masks([0, 1, 2, 3, 8], [2, 3, 4, 5, 9])
    ignore = torch.zeros(1, 10, dtype=torch.bool)
    ignore[0, [0, 1, 4, 5]] = True  # leaves pred {2, 3, 8}, target {2, 3, 9}
    metrics = SegmentationMetrics()
    metrics.update(pred, target, ignore=ignore)
    assert metrics.dice == [pytest.approx(4 / 6)] and metrics.iou == [pytest.approx(2 / 4)]
    summary = metrics.summary()
    assert summary["dice_micro"] == pytest.approx(4 / 6) and summary["iou_micro"] == pytest.approx(2 / 4)
    assert (metrics.pred_pixels, metrics.target_pixels, metrics.intersection) == (3, 3, 2)


def test_share_below_counts_images_strictly_under_the_threshold() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([1], [1]))  # 1.0
    metrics.update(*masks([1, 2], [2, 3]))  # 0.5
    metrics.update(*masks([1, 2, 3], [2, 3, 4]))  # 2/3
    metrics.update(*masks([1], [2]))  # 0.0
    assert metrics.share_below(0.7) == 3 / 4
    assert metrics.share_below(0.5) == 1 / 4  # 0.5 itself is not under 0.5


@pytest.mark.parametrize(("name", "breed"), [("Great_Pyrenees_12", "Great_Pyrenees"), ("Bengal_7", "Bengal"),
                                             ("pug", "pug")])
def test_breed_is_the_name_before_its_last_underscore(name: str, breed: str) -> None:
    assert breed_of(name) == breed


def test_by_group_gives_each_breed_its_mean_failures_and_count_sorted_by_name() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([1], [1]), names=["pug_1"])  # 1.0
    metrics.update(*masks([1, 2], [2, 3]), names=["Bengal_4"])  # 0.5
    metrics.update(*masks([1], [2]), names=["pug_2"])  # 0.0
    metrics.update(*masks([1, 2, 3], [1, 2, 3, 4]), names=["Bengal_9"])  # 6/7
    groups = metrics.by_group(breed_of)
    assert list(groups) == ["Bengal", "pug"]
    assert groups["Bengal"] == {"dice": pytest.approx((0.5 + 6 / 7) / 2), "below_0.7": 0.5, "images": 2}
    assert groups["pug"] == {"dice": 0.5, "below_0.7": 0.5, "images": 2}


def test_split_metrics_all_empty_images_score_one() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([], []))
    assert metrics.summary()["dice_micro"] == 1.0 and metrics.summary()["iou_micro"] == 1.0


def test_split_metrics_worst_lists_lowest_dice_first() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([1], [1]), names=["good"])
    metrics.update(*masks([1], [2]), names=["bad"])
    metrics.update(*masks([1, 2], [2]), names=["half"])
    worst = metrics.worst(2)
    assert [row["name"] for row in worst] == ["bad", "half"]
    for index in range(12):
        metrics.update(*masks([1], [1]), names=[f"more_{index}"])
    assert len(metrics.worst()) == 10  # ten by default
    assert worst[1]["dice"] == pytest.approx(2 / 3) and worst[1]["iou"] == pytest.approx(1 / 2)


def test_split_metrics_names_default_to_running_indices() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([1], [1]))
    pair = torch.zeros(2, 10, dtype=torch.bool)
    metrics.update(pair, pair)
    assert metrics.names == ["0", "1", "2"]


def test_a_breed_at_exactly_0_7_has_no_failures() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks(list(range(10)), list(range(3, 13)), n=20), names=["pug_1"])  # overlap 7 of 10 + 10
    assert metrics.dice == [0.7]
    assert metrics.by_group(breed_of)["pug"]["below_0.7"] == 0.0
