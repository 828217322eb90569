"""Upstream T2S GPT (`AR.models.t2s_model.Text2SemanticDecoder`) as an oracle (dev only, needs torch).

Builds the upstream decoder with seeded random weights at a scale where greedy decoding is diverse
(unit-variance embeddings, linear weights 0.5/sqrt(fan_in), positional alpha near 1), rounded to fp16
as upstream stores them; writes official `.ckpt` files with `torch.save`; runs upstream's
`infer_panel_naive` and records the logits it produced at every step; exposes upstream's
`logits_to_probs`.
"""

from __future__ import annotations

import copy
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from primespeech_devtools.oracle import fp16_state_dict, import_upstream, round_to_fp16_

_MODEL = {
    "vocab_size": 1025,
    "phoneme_vocab_size": 732,
    "embedding_dim": 512,
    "hidden_dim": 512,
    "head": 16,
    "linear_units": 2048,
    "n_layer": 24,
    "dropout": 0,
    "EOS": 1024,
    "random_bert": 0,
}

# The layout of configs/s1longer-v2.yaml, as upstream's trainer stores it in every GPT checkpoint.
FULL_CONFIG: dict[str, Any] = {
    "train": {"seed": 1234, "epochs": 20, "batch_size": 8, "save_every_n_epoch": 1,
              "precision": "16-mixed", "gradient_clip": 1.0},
    "optimizer": {"lr": 0.01, "lr_init": 1e-05, "lr_end": 0.0001, "warmup_steps": 2000, "decay_steps": 40000},
    "data": {"max_eval_sample": 8, "max_sec": 54, "num_workers": 4, "pad_val": 1024},
    "model": _MODEL,
    "inference": {"top_k": 15},
}


def make_config(**model_overrides: Any) -> dict[str, Any]:
    """A checkpoint config: the full-size v2 one with `model` entries replaced (e.g. n_layer=2)."""
    cfg = copy.deepcopy(FULL_CONFIG)
    cfg["model"].update(model_overrides)
    return cfg


SMALL_CONFIG = make_config(n_layer=2)


# Random-weight scale. Unit-variance embeddings; with linear weights at 0.5/sqrt(fan_in) and biases of
# 0.05 the 24-layer model's greedy decoding fell into 2-token loops (3-5 distinct codes in 150 steps);
# at 0.3/sqrt(fan_in) it gave 64-68 distinct codes with prompt and without, with biases and LayerNorm
# parameters still far from their defaults, so that every parameter takes part in the comparison.
LINEAR_GAIN = 0.3
BIAS_STD = 0.05
NORM_STD = 0.1
ALPHA_STD = 0.1


def build_decoder(config: dict[str, Any] | None = None, seed: int = 0):
    """Upstream `Text2SemanticDecoder`: seeded random fp16-exact weights, fast blocks rebuilt, eval mode."""
    import_upstream()
    import torch
    from AR.models.t2s_model import Text2SemanticDecoder

    config = config or FULL_CONFIG
    torch.manual_seed(seed)
    model = Text2SemanticDecoder(config, top_k=3)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(1.0 + ALPHA_STD * torch.randn(p.shape, generator=gen))
            elif "word_embeddings" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + NORM_STD * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(BIAS_STD * torch.randn(p.shape, generator=gen))
            else:  # every linear weight, in_proj_weight included: [out, in]
                p.copy_(LINEAR_GAIN / math.sqrt(p.shape[1]) * torch.randn(p.shape, generator=gen))
    round_to_fp16_(model)
    # The fast T2S blocks hold transposed copies of the weights taken at construction time.
    model.rebuild_t2s_transformer()
    return model.eval()


def save_checkpoint(model, config: dict[str, Any], path: str | os.PathLike, info: str = "GPT-e15") -> Path:
    """Write `model` as upstream's trainer does: {'weight': fp16 state dict with 'model.' prefix,
    'config', 'info'}."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = OrderedDict()
    ckpt["weight"] = fp16_state_dict(model, prefix="model.")
    ckpt["config"] = config
    ckpt["info"] = info
    torch.save(ckpt, str(path))
    return path


def write_random_checkpoint(path: str | os.PathLike, config: dict[str, Any] | None = None, seed: int = 0):
    """(upstream decoder, path of the official-format .ckpt holding its weights)."""
    config = config or FULL_CONFIG
    model = build_decoder(config, seed)
    return model, save_checkpoint(model, config, path)


def random_inputs(n_phones: int, n_prompt: int, seed: int = 0, phoneme_vocab: int = 732,
                  codebook: int = 1024):
    """(phones int64 [T], bert float32 [1024, T], prompt int64 [P]) drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    phones = rng.integers(0, phoneme_vocab, n_phones).astype(np.int64)
    bert = rng.standard_normal((1024, n_phones)).astype(np.float32)
    prompt = rng.integers(0, codebook, n_prompt).astype(np.int64)
    return phones, bert, prompt


def random_rows(lengths, n_prompt: int, seed: int):
    """Rows `(phones, bert)` of the given text lengths (row i from seed + i) and the first row's
    prompt codes shared by all (None when n_prompt is 0), as a batch of segments has them."""
    rows, prompt = [], None
    for i, n in enumerate(lengths):
        phones, bert, p = random_inputs(n, n_prompt, seed=seed + i)
        rows.append((phones, bert))
        prompt = p if prompt is None else prompt
    return rows, (prompt if n_prompt else None)


@dataclass
class UpstreamRun:
    """What `infer_panel_naive` produced."""

    codes: list[int]  # newly generated codes (prompt removed); [0] when it generated none and had no prompt
    idx: int  # the decode step index it stopped at (what upstream's TTS slices with)
    logits: list[np.ndarray]  # raw ar_predict_layer output [vocab] of every step, the prefill first


def run_naive(model, phones, bert, prompt=None, *, top_k: int = 1, top_p: float = 1.0,
              temperature: float = 1.0, repetition_penalty: float = 1.0, early_stop_num: int = -1,
              seed: int | None = None) -> UpstreamRun:
    """Run upstream's `infer_panel_naive` (batch 1) and record the logits of every step."""
    import torch

    logits: list[np.ndarray] = []

    def hook(_module, _inputs, output):
        # upstream modifies the logits in place afterwards (repetition penalty), so copy now
        logits.append(output.detach()[0].float().numpy().copy())

    x = torch.as_tensor(np.asarray(phones, dtype=np.int64))[None]
    b = torch.as_tensor(np.asarray(bert, dtype=np.float32))[None]
    p = None
    if prompt is not None and len(prompt):
        p = torch.as_tensor(np.asarray(prompt, dtype=np.int64))[None]
    if seed is not None:
        torch.manual_seed(seed)
    handle = model.ar_predict_layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            *_, (y, idx) = model.infer_panel_naive(
                x, torch.tensor([x.shape[1]]), p, b, top_k=top_k, top_p=top_p, early_stop_num=early_stop_num,
                temperature=temperature, repetition_penalty=repetition_penalty)
    finally:
        handle.remove()
    y = y[0].tolist()
    prefix = 0 if p is None else p.shape[1]
    return UpstreamRun(codes=y[prefix:] if len(y) > prefix else y, idx=int(idx), logits=logits)


def logits_to_probs(logits, previous_tokens=None, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, repetition_penalty: float = 1.0) -> np.ndarray:
    """Upstream `AR.models.utils.logits_to_probs` on one logits vector [V]; returns probs [V]."""
    import_upstream()
    import torch
    from AR.models.utils import logits_to_probs as upstream

    t = torch.as_tensor(np.array(logits, dtype=np.float32))[None]
    prev = None
    if previous_tokens is not None:
        prev = torch.as_tensor(np.asarray(previous_tokens, dtype=np.int64))[None]
    with torch.no_grad():
        probs = upstream(t, prev, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty)
    return probs[0].numpy()
