"""The service drops small detached blobs from the mask (PETSEG_MIN_BLOB_RATIO, default 0.1); 0 keeps them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.app.helpers import app_client, image_files, mask_array, swap_forward
from tests.factories import png_bytes

SIDE = 64  # the tiny checkpoint's input size: the photo is not resized, so the mask is the map thresholded


def _two_blobs(batch: torch.Tensor) -> torch.Tensor:
    prob = torch.full((batch.shape[0], SIDE, SIDE), 0.05)
    prob[:, 8:40, 8:40] = 0.95  # the pet: 1024 px
    prob[:, 50:56, 50:56] = 0.9  # a false alarm: 36 px, 3.5% of the pet
    return prob


@pytest.mark.parametrize(("overrides", "kept"), [({}, False), ({"min_blob_ratio": 0.0}, True)])
def test_the_small_blob_is_dropped_by_default_and_kept_with_ratio_0(tiny_checkpoint: Path, overrides: dict,
                                                                    kept: bool) -> None:
    photo = png_bytes(np.full((SIDE, SIDE, 3), 128, dtype=np.uint8))
    with app_client(tiny_checkpoint, **overrides) as client:
        swap_forward(client, _two_blobs)
        response = client.post("/segment", files=image_files(photo, "pet.png", "image/png"))
        assert response.status_code == 200, response.text
        mask = mask_array(response.json())
    assert (mask[8:40, 8:40] == 255).all()
    assert (mask[50:56, 50:56] == 255).all() == kept
    assert mask.sum() // 255 == 1024 + (36 if kept else 0)
