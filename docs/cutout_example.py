"""Make the README's cutout pictures from a real photo, through the service with the embedded model.

    python docs/cutout_example.py          # needs ../shared/data/oxford_pet_sample (Bengal_128: held-out photo)

Writes docs/alpha-cutout.png (the answer to ``output=alpha`` for the photo scaled to 400 pixels wide, as the
service sends it) and docs/soft-edges.jpg (the cat's back at 3x, over blue: ``output=cutout`` above,
``output=alpha`` below, both with ``background=#2b6cb0`` from the full-size photo).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

PHOTO = REPO.parent / "shared" / "data" / "oxford_pet_sample" / "images" / "Bengal_128.jpg"
ZOOM_BOX = (300, 20, 480, 160)  # left, top, right, bottom in the full-size photo: the cat's back and an ear
ZOOM = 3


def segment(client: TestClient, photo: bytes, **form: str) -> Image.Image:
    response = client.post("/segment?format=png", files={"image": ("photo.jpg", photo, "image/jpeg")}, data=form)
    response.raise_for_status()
    return Image.open(io.BytesIO(response.content))


def main() -> None:
    photo = PHOTO.read_bytes()
    original = Image.open(io.BytesIO(photo))
    small = io.BytesIO()
    original.resize((400, round(400 * original.height / original.width)), Image.LANCZOS).save(
        small, format="JPEG", quality=95)
    settings = Settings(checkpoint=REPO / "models" / "weights" / "default.pt", device="cpu", precision="fp32",
                        compile="off", _env_file=None)
    with TestClient(create_app(settings)) as client:
        alpha = segment(client, small.getvalue(), output="alpha")
        alpha.save(REPO / "docs" / "alpha-cutout.png", optimize=True)
        rows = [segment(client, photo, output=output, background="#2b6cb0").crop(ZOOM_BOX)
                for output in ("cutout", "alpha")]
    width, height = ZOOM_BOX[2] - ZOOM_BOX[0], ZOOM_BOX[3] - ZOOM_BOX[1]
    zoomed = [np.asarray(row.resize((width * ZOOM, height * ZOOM), Image.NEAREST)) for row in rows]
    gap = np.full((6, width * ZOOM, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([zoomed[0], gap, zoomed[1]])).save(REPO / "docs" / "soft-edges.jpg",
                                                                      quality=85)
    for name in ("alpha-cutout.png", "soft-edges.jpg"):
        print(f"docs/{name}: {(REPO / 'docs' / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
