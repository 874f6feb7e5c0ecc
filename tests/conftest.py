"""Shared fixtures: a synthetic dataset, a small real checkpoint, and the app built on it."""
from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tqdm import tqdm

from tests.factories import SAMPLE_DATA, make_checkpoint, make_pet_dataset

# The suite runs the eager engine (servers started by tests inherit this): compiling each tiny test model would
# cost minutes. tests/models/test_compile.py turns compilation on where it is the subject.
os.environ.setdefault("PETSEG_COMPILE", "off")
# No tqdm monitor thread, and a lock of this process's own instead of tqdm's default, which is shared across
# processes: mutation testing forks a process per mutant, and one forked while the monitor held the lock, or
# after a process killed while holding the shared one, waits for that lock forever.
tqdm.monitor_interval = 0
tqdm.set_lock(threading.RLock())


@pytest.fixture(scope="session")
def pet_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 trainval + 4 test images in the official layout, quirks included. Read-only by convention."""
    return make_pet_dataset(tmp_path_factory.mktemp("pets") / "oxford-iiit-pet")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", image_size=64)


@pytest.fixture(scope="module")
def module_tmp_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for one module's shared training runs, deleted when its tests are done unless one failed.

    A UNet training run writes about 0.4 GB (weights with optimizer state), and pytest keeps every session
    folder to the end, so runs kept for the whole session once filled a CI machine's disk.
    """
    failed_before = request.session.testsfailed
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield folder
    if request.session.testsfailed == failed_before:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    if not (SAMPLE_DATA / "annotations" / "trainval.txt").is_file():
        pytest.skip(f"the real Oxford-IIIT Pet sample is absent ({SAMPLE_DATA})")
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``PETSEG_CACHE_DIR`` pointed at a folder of this session's, so each checkpoint is exported to ONNX (and
    quantised) once per session, by whichever test asks first."""
    from models.engine.export_cache import CACHE_ENV

    folder = tmp_path_factory.mktemp("petseg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture
def settings(tiny_checkpoint: Path):
    from app.config import Settings

    return Settings(checkpoint=tiny_checkpoint, device="cpu", max_upload_bytes=5_000_000, max_pixels=20_000_000,
                    _env_file=None)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client
