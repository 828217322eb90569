"""Shared pieces of the model modules: argument dataclasses."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any


@dataclasses.dataclass
class BaseModelArgs:
    """`from_dict` builds the dataclass from a config, ignoring keys it does not know."""

    @classmethod
    def from_dict(cls, params: dict[str, Any]):
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

