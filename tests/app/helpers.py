"""Helpers shared by the tests in tests/app/: uploads, PNG decoding, app construction, forward swapping."""
from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_settings(checkpoint: Path, **overrides: Any) -> Settings:
    """Settings that ignore the environment's .env; fp32 by default, the fastest path on this CPU."""
    values: dict[str, Any] = {"checkpoint": checkpoint, "device": "cpu", "precision": "fp32",
                              "max_upload_bytes": 5_000_000, "max_pixels": 20_000_000}
    values.update(overrides)
    return Settings(**values, _env_file=None)


@contextmanager
def app_client(checkpoint: Path, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient with the lifespan run (model loaded and warm) on settings built from ``overrides``."""
    with TestClient(create_app(make_settings(checkpoint, **overrides))) as client:
        yield client


def image_files(data: bytes, name: str = "pet.jpg", mime: str = "image/jpeg",
                ground_truth: bytes | None = None) -> dict[str, tuple[str, bytes, str]]:
    files = {"image": (name, data, mime)}
    if ground_truth is not None:
        files["ground_truth"] = ("truth.png", ground_truth, "image/png")
    return files


def open_png(data: bytes) -> Image.Image:
    assert data[:8] == PNG_SIGNATURE, data[:16]
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def assert_photo_where_visible(rgba: np.ndarray, photo: np.ndarray) -> None:
    """A transparent answer keeps the photo's colour wherever its alpha is above 0, and is black elsewhere."""
    assert rgba.shape[:2] == photo.shape[:2] and rgba.shape[2] == 4, (rgba.shape, photo.shape)
    visible = rgba[..., 3] > 0
    np.testing.assert_array_equal(rgba[..., :3][visible], photo[visible])
    assert not rgba[..., :3][~visible].any()


def b64_png(text: str) -> Image.Image:
    return open_png(base64.b64decode(text))


def mask_array(body: dict[str, Any]) -> np.ndarray:
    """The JSON answer's mask as a HxW uint8 array (0/255)."""
    return np.asarray(b64_png(body["mask_png"]))


Forward = Callable[[torch.Tensor], torch.Tensor]


def swap_forward(client: TestClient, forward: Forward) -> Forward:
    """Make the service's batch runner call ``forward``; returns the real one to restore with this function.

    Patching ``segmenter.forward`` on the instance has no effect once the app is up: the runner captured the
    bound method when the service was built, so we go through the runner's public ``configure`` instead.
    """
    service = client.app.state.service
    runner = service.runner
    real = runner._forward
    runner.configure(forward, max_batch=runner.max_batch, batch_wait_ms=runner.batch_wait_s * 1000.0,
                     on_batch=runner._on_batch)
    return real
