"""Property-based API testing: schemathesis generates requests from the app's own OpenAPI schema.

Bounded: a fixed number of examples per operation, no deadline. It must find no 5xx, no response that violates
the schema (status codes, content types, bodies, headers), and no invalid request that is accepted.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.factories import make_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow
_CHECKPOINT = make_checkpoint(Path(tempfile.mkdtemp(prefix="petseg-schemathesis-")) / "tiny.pt", image_size=32)
app = create_app(Settings(checkpoint=_CHECKPOINT, device="cpu", max_upload_bytes=2_000_000, max_pixels=4_000_000,
                          _env_file=None))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _running_app() -> Iterator[None]:
    """Run the lifespan once so the model is loaded for every generated request."""
    with TestClient(app):
        yield


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    # Every default check but "positive data accepted": schema-valid random bytes are not a decodable image,
    # and refusing them with a 4xx is the right answer.
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])
