"""Shared pieces of the model modules: argument dataclasses and strict weight loading."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import PrimeSpeechError


@dataclasses.dataclass
class BaseModelArgs:
    """`from_dict` builds the dataclass from a config, ignoring keys it does not know."""

    @classmethod
    def from_dict(cls, params: dict[str, Any]):
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_weights_strict(model: nn.Module, weights: dict[str, mx.array], what: str) -> None:
    """Load `weights` into `model`: every parameter covered, nothing extra, every shape equal."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    if missing or extra or wrong:
        details = []
        if missing:
            details.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if extra:
            details.append(f"unexpected {len(extra)} (e.g. {', '.join(extra[:3])})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} with the wrong shape (e.g. {k}: file {tuple(weights[k].shape)}, "
                           f"model {tuple(expected[k].shape)})")
        raise PrimeSpeechError(
            f"{what} weights do not match the model: {'; '.join(details)}. The file is not a supported "
            "GPT-SoVITS checkpoint of this kind, or its conversion is stale: delete the converted folder "
            "and convert again."
        )
    model.load_weights(list(weights.items()), strict=True)
