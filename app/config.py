"""Service settings from ``PETSEG_*`` environment variables (and an optional ``.env``), validated at start-up."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.imaging.blobs import DEFAULT_MIN_BLOB_RATIO

__all__ = ["DEFAULT_CHECKPOINT", "DEFAULT_MODEL_NAME", "Settings", "SettingsError", "load_settings"]

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "weights" / "default.pt"
ENV_PREFIX = "PETSEG_"
DEFAULT_MODEL_NAME = "default"  # the name of the one model served from PETSEG_CHECKPOINT
# Model names go into form fields, JSON, headers and Prometheus labels: keep them plain.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SettingsError(ValueError):
    """An invalid ``PETSEG_*`` variable; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", env_ignore_empty=True,
                                      extra="ignore")

    checkpoint: Path = Field(DEFAULT_CHECKPOINT, description="checkpoint to serve; default: the embedded model")
    checkpoints: dict[str, Path] | None = Field(
        None, description="several models at once: JSON object of name -> checkpoint path, the first is the "
                          "default; replaces PETSEG_CHECKPOINT")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="what runs the model: torch, or its ONNX export on onnxruntime or openvino (extras "
                            "onnx, openvino; CPU); auto = the measured rule of models.engine.selection.auto_engine: "
                            "the PyTorch engine on GPUs and CPUs with AMX, OpenVINO int8 on other CPUs")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto", description="inference precision: fp32, bf16, fp16 (CUDA), int8 (onnxruntime, openvino); auto = "
                            "the runtime rule's choice, else bf16 where the hardware computes it, else fp16/fp32")
    calibration_data: Path | None = Field(
        None, description="int8 calibration photos: an Oxford-IIIT Pet root (its train split) or a folder of photos; "
                          "when unset, the int8 ranges stored in the checkpoint, else dataset/oxford-iiit-pet")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the model during warm-up; auto = on the CPU when a C++ compiler "
                            "(g++/clang++) is installed, off on CUDA. Adds 10-60 s to the first start on a small CPU")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="default probability threshold for the mask")
    min_blob_ratio: float = Field(
        DEFAULT_MIN_BLOB_RATIO, ge=0.0, le=1.0,
        description="drop detached regions of the mask smaller than this share of the largest one (false alarms on "
                    "furniture, pavement, plants; models.imaging.blobs); 0 keeps every region")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0,
                                  description="largest request body; larger is a 413 while it streams in")
    max_pixels: int = Field(50_000_000, gt=0, description="largest image (width x height), checked from the header "
                                                          "before decoding: 413")
    max_batch: int = Field(0, ge=0, le=256, description="micro-batch size; 0 = auto (1 on CPU, 8 on GPU)")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long a batch waits to fill")
    model_lanes: int = Field(
        0, ge=0, le=64, description="forward passes that may run at once, each on an equal share of the CPU cores "
                                    "(a pass that runs alone gets them all); 0 = auto (2 on a CPU with 2-3 cores, "
                                    "else 1)")
    max_queue: int = Field(64, ge=1, description="requests waiting for the model before 503 + Retry-After")
    request_timeout_s: float = Field(60.0, gt=0, description="per-request time limit (503 after it)")
    api_key: str | None = Field(None, description="when set, every endpoint but /health, /ready (the probes) and the "
                                                  "page at / (which asks for the key) needs X-API-Key (or "
                                                  "Authorization: Bearer); petseg segment sends it too")
    cors_origins: list[str] = Field(default_factory=list, description="allowed CORS origins (JSON list)")
    allow_urls: bool = Field(False, description="fetch photos from an image_url field (off: such requests get "
                                                "403)")
    url_allow_hosts: list[str] = Field(
        default_factory=list, description="hosts (names or addresses, JSON list) image_url may reach even when they "
                                          "resolve to loopback, private or other non-public addresses")
    url_connect_timeout_s: float = Field(5.0, gt=0, le=60, description="image_url: time to connect")
    url_read_timeout_s: float = Field(10.0, gt=0, le=300, description="image_url: longest wait for more bytes")
    removebg_default_size: Literal["auto", "preview", "full", "medium", "hd", "4k", "50mp", "small", "regular"] = \
        Field("auto", description="the size POST /v1.0/removebg answers at when a request sends none: auto (the "
                                  "photo's own resolution); remove.bg's own default is preview (0.25 megapixels): "
                                  "set preview for answers identical in size to remove.bg's")
    removebg_credits: float = Field(
        1_000_000.0, ge=0, description="the credit balance GET /v1.0/account reports to remove.bg clients that "
                                      "check it; this service charges none (X-Credits-Charged: 0)")
    allow_untrained: bool = Field(False, description="serve a checkpoint with epoch 0 (random weights): tests only")
    log_level: str = Field("info", description="logging level of the service and uvicorn (debug, info, warning, "
                                                "error); petseg-serve --log-level overrides it")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("expected auto, cpu, cuda or cuda:N")

    @field_validator("url_allow_hosts")
    @classmethod
    def _normalise_hosts(cls, value: list[str]) -> list[str]:
        hosts = [host.strip().lower().strip("[]") for host in value]
        if any(not host or "/" in host or " " in host for host in hosts):
            raise ValueError("expected host names or addresses, without scheme, port or path")
        return hosts

    @field_validator("checkpoints")
    @classmethod
    def _check_model_names(cls, value: dict[str, Path] | None, info: ValidationInfo) -> dict[str, Path] | None:
        if value is None:
            return None
        if info.data.get("checkpoint", DEFAULT_CHECKPOINT) != DEFAULT_CHECKPOINT:
            raise ValueError("set PETSEG_CHECKPOINTS or PETSEG_CHECKPOINT, not both")
        if not value:
            raise ValueError("expected a JSON object with at least one name -> checkpoint pair")
        bad = [name for name in value if not MODEL_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"model names must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
                             f"or digit): {bad}")
        return value

    def model_checkpoints(self) -> dict[str, Path]:
        """The models to serve, name -> checkpoint, default first: PETSEG_CHECKPOINTS, else PETSEG_CHECKPOINT as
        the one model named ``default``."""
        return dict(self.checkpoints) if self.checkpoints is not None else {DEFAULT_MODEL_NAME: self.checkpoint}


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning pydantic's error into one line per bad variable, named as in the environment."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}={error.get('input')!r}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
