"""Response models: every field documented, with examples, for the OpenAPI page."""
from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["CropBox", "HealthResponse", "ModelInfo", "ModelRef", "ModelsResponse", "ReadyResponse",
           "SegmentResponse", "ServedModelInfo"]


class ModelRef(BaseModel):
    name: str = Field(description="the model's name (the `model` field; see GET /models)", examples=["default"])
    arch: str = Field(description="architecture name", examples=["resnet34_unet"])
    checkpoint_sha256: str | None = Field(description="sha256 of the checkpoint file served",
                                          examples=["3f2a...e9"])


class CropBox(BaseModel):
    x: int = Field(description="left edge of the crop in the photo, in pixels", examples=[112])
    y: int = Field(description="top edge of the crop in the photo, in pixels", examples=[40])
    width: int = Field(description="width of the crop (and of output_png)", examples=[290])
    height: int = Field(description="height of the crop (and of output_png)", examples=[301])


class SegmentResponse(BaseModel):
    width: int = Field(description="width of the uploaded image (after EXIF orientation)", examples=[500])
    height: int = Field(description="height of the uploaded image (after EXIF orientation)", examples=[375])
    threshold: float = Field(description="probability threshold used for the mask", examples=[0.5])
    foreground_probability: float = Field(description="mean per-pixel foreground (pet) probability",
                                          examples=[0.31])
    foreground_fraction: float = Field(description="share of pixels in the mask", examples=[0.29])
    dice: float | None = Field(description="Dice of the mask against the uploaded ground truth; null without one",
                               examples=[0.94])
    mask_png: str = Field(description="base64 of a single-channel PNG, 0 background / 255 pet, at the image's size",
                          examples=["iVBORw0KGgoAAAANSUhEUgAA..."])
    output: str = Field(description="the rendering requested with `output`", examples=["mask"])
    output_png: str | None = Field(None, description="base64 PNG of the requested rendering (probability, "
                                                     "overlay, cutout, alpha; cropped with crop=true); null for "
                                                     "the plain mask, which is mask_png")
    crop: CropBox | None = Field(None, description="where output_png was cut from the photo (crop=true); null "
                                                   "when not cropped")
    model: ModelRef = Field(description="the model that answered")
    inference_ms: float = Field(description="time spent waiting for and running the model, in ms", examples=[62.5])


class HealthResponse(BaseModel):
    status: str = Field(description="always `ok` while the process serves requests", examples=["ok"])


class ReadyResponse(BaseModel):
    ready: bool = Field(description="true once the model is loaded and warmed up", examples=[True])
    detail: str = Field(description="what the service is doing", examples=["model loaded and warm"])


class ModelInfo(BaseModel):
    name: str = Field(examples=["default"], description="the default model's name (GET /models lists them all)")
    arch: str = Field(examples=["resnet34_unet"], description="architecture")
    parameters: int = Field(examples=[30905025], description="number of parameters")
    device: str = Field(examples=["cpu"], description="where the model runs")
    dtype: str = Field(examples=["bf16"], description="inference precision: fp32, bf16 or fp16 weights, or int8")
    runtime: str = Field(examples=["torch"], description="what runs the model: torch, onnxruntime or openvino "
                                                         "(PETSEG_RUNTIME; auto is resolved)")
    precision: str = Field(examples=["bf16"], description="inference precision (PETSEG_PRECISION; auto is resolved): "
                                                          "fp32, bf16, fp16 or int8")
    compiled: bool = Field(examples=[True], description="whether torch.compile serves the warmed batch sizes")
    input_size: int = Field(examples=[192], description="images are resized to input_size x input_size")
    max_batch: int = Field(examples=[1], description="largest micro-batch")
    model_lanes: int = Field(examples=[2], description="forward passes that may run at once (PETSEG_MODEL_LANES)")
    checkpoint_file: str = Field(examples=["models/weights/default.pt"], description="checkpoint path")
    checkpoint_sha256: str = Field(description="sha256 of the checkpoint file")
    epoch: int = Field(examples=[100], description="training epoch of the checkpoint")
    validation_dice: float | None = Field(examples=[0.9], description="validation Dice recorded at that epoch")
    created_at: str = Field(description="when the checkpoint was written (UTC, ISO 8601)")
    card: dict[str, object] = Field(default_factory=dict, description="model card key facts, when embedded")


class ServedModelInfo(BaseModel):
    name: str = Field(examples=["default"], description="what to send as the `model` field")
    default: bool = Field(examples=[True], description="answers requests that name no model")
    arch: str = Field(examples=["resnet34_unet"], description="architecture")
    parameters: int = Field(examples=[30905025], description="number of parameters")
    device: str = Field(examples=["cpu"], description="where the model runs")
    dtype: str = Field(examples=["bf16"], description="inference precision")
    runtime: str = Field(examples=["torch"], description="torch, onnxruntime or openvino")
    input_size: int = Field(examples=[192], description="images are resized to input_size x input_size")
    weights_bytes: int = Field(examples=[61810050], description="memory its weights take as served (parameters "
                                                                "and buffers in the serving dtype); each forward "
                                                                "pass adds its activations on top")
    checkpoint_sha256: str = Field(description="sha256 of the checkpoint file")
    epoch: int = Field(examples=[100], description="training epoch of the checkpoint")
    validation_dice: float | None = Field(examples=[0.9], description="validation Dice recorded at that epoch")


class ModelsResponse(BaseModel):
    default: str = Field(examples=["default"], description="the model used when a request names none")
    models: list[ServedModelInfo] = Field(description="every model served, the default first")
