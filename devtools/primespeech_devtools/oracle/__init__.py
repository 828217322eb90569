"""The upstream GPT-SoVITS PyTorch implementation as a test and benchmark oracle (dev only).

Needs `torch` and `gpt-sovits-cpufast` (installed by `make test` with --no-deps). Importing
`GPT_SoVITS` puts its folder first on sys.path, so top-level `text`, `module`, `AR` and `utils`
then mean upstream's modules; this package has no such top-level names, so both can share a
process. Nothing here is used at run time.
"""

from __future__ import annotations

import os
from typing import Any

from dora_primespeech_mlx.errors import PrimeSpeechError


def import_upstream() -> str:
    """Import upstream GPT-SoVITS (vendored by gpt-sovits-cpufast); returns its folder."""
    try:
        import GPT_SoVITS
        import torch  # noqa: F401
    except ImportError as exc:
        raise PrimeSpeechError(
            "the upstream oracle is not installed: run `make test` once, or "
            "`pip install torch==2.13.0 && pip install --no-deps gpt-sovits-cpufast==0.1.0`"
        ) from exc
    return os.path.dirname(GPT_SoVITS.__file__)


def round_to_fp16_(module) -> None:
    """Round every parameter and buffer of a torch module to float16 values, kept in float32,
    so the upstream model and a checkpoint saved in fp16 hold identical numbers."""
    import torch

    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def fp16_state_dict(module, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A state dict as upstream saves it: float tensors in fp16, keys optionally prefixed."""
    from collections import OrderedDict

    out = OrderedDict()
    for key, value in module.state_dict().items():
        if any(s in key for s in skip):
            continue
        out[prefix + key] = value.half() if value.is_floating_point() else value
    return out
