"""Prometheus metrics, served at ``/metrics`` in the text format by prometheus-client."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, Info, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "observe_batch", "render", "set_model_info"]

REQUESTS = Counter("petseg_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"])
LATENCY = Histogram("petseg_http_request_seconds", "HTTP request latency by route", ["route"],
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INFERENCE = Histogram("petseg_inference_seconds", "model forward time per batch, by model name", ["model"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
BATCH_SIZE = Histogram("petseg_batch_size", "images per model batch, by model name", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64))
QUEUE_DEPTH = Gauge("petseg_queue_depth", "requests waiting for the model")
REJECTED = Counter("petseg_rejected_total", "requests refused, by reason", ["reason"])
MODEL = Info("petseg_model", "the models being served, by name", ["model"])


def observe_batch(size: int, seconds: float, model: str) -> None:
    BATCH_SIZE.labels(model).observe(size)
    INFERENCE.labels(model).observe(seconds)


def set_model_info(model: str, arch: str, device: str, precision: str, sha256: str) -> None:
    MODEL.labels(model).info({"arch": arch, "device": device, "precision": precision, "checkpoint_sha256": sha256})


def render() -> bytes:
    return generate_latest()
