"""The models one service holds, by name (``PETSEG_CHECKPOINTS``): the first is the default; asking for a name
that is not there is the client's mistake (422, listing the names there are)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from torch import nn

from app.errors import ApiError
from models.engine.segmenter import SegmenterBase

__all__ = ["ModelSet", "ServedModel", "weights_bytes"]


def weights_bytes(segmenter: SegmenterBase) -> int:
    """Bytes of the weights as served: the module's parameters and buffers in their serving dtype (a bf16
    model holds half its fp32 checkpoint). Without a torch module (an exported runtime): the checkpoint's
    tensors."""
    module = getattr(segmenter, "model", None)
    tensors = chain(module.parameters(), module.buffers()) if isinstance(module, nn.Module) else \
        segmenter.checkpoint.model_state.values()
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@dataclass(frozen=True)
class ServedModel:
    name: str
    segmenter: SegmenterBase
    weights_bytes: int
    is_default: bool


class ModelSet:
    """Name -> loaded model, in the configured order."""

    def __init__(self, segmenters: dict[str, SegmenterBase]) -> None:
        if not segmenters:
            raise ValueError("a service needs at least one model")
        self.default_name = next(iter(segmenters))
        self._models = {
            name: ServedModel(name, segmenter, weights_bytes(segmenter), is_default=name == self.default_name)
            for name, segmenter in segmenters.items()}

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    @property
    def names(self) -> list[str]:
        return list(self._models)

    @property
    def default(self) -> ServedModel:
        return self._models[self.default_name]

    def get(self, name: str | None) -> ServedModel:
        """The model called ``name`` (None or empty: the default); 422 naming the known ones otherwise."""
        if not name:
            return self.default
        served = self._models.get(name)
        if served is None:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ApiError(422, f"unknown model {shown!r}; this service has: {', '.join(self._models)}")
        return served
