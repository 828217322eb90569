"""Upstream CNHuBERT and Chinese RoBERTa with seeded random weights, written as official model folders.

`write_hubert_folder` / `write_roberta_folder` build upstream's pure-torch `HubertInferenceModel` and
`BertForMaskedLM` from the configs GPT-SoVITS ships, give them random weights at an informative scale
(unit-variance activations, LayerNorm gains near 1, attention logits of order 1), round them to fp16
and write `pytorch_model.bin` with `torch.save` under the Hugging Face key names, next to the shipped
`config.json` (optionally overridden for small test models), `preprocessor_config.json` and the real
`tokenizer.json`, in the `moyoyo/<name>/` layout dora-primespeech users have. The reference functions
load those folders with upstream's own loaders (`CNHubert`, `chinese_bert.load_model`; a BERT folder
from `model_folder` keeps the built model instead, with the same values) and run upstream's forward /
`get_bert_feature`. Dev only: torch is needed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from primespeech_devtools.oracle import fp16_state_dict, import_upstream

HUBERT_NAME = "chinese-hubert-base"
ROBERTA_NAME = "chinese-roberta-wwm-ext-large"


@contextlib.contextmanager
def _quiet_weight_norm():
    # Upstream builds HuBERT's positional conv with the deprecated `nn.utils.weight_norm`.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        yield


_FOLDERS: dict[tuple, Path] = {}
_ORACLES: dict[tuple, Any] = {}


def shipped_folder(name: str) -> Path:
    """The model folder (configs, tokenizer) that the upstream package ships without weights."""
    return Path(import_upstream()) / "pretrained_models" / name


def _config(name: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    config = json.loads((shipped_folder(name) / "config.json").read_text())
    config.update(overrides or {})
    return config


def randomize_(module, seed: int, *, conv_gain: float = 1.0, qk_gain: float = 2.0,
               v_gain: float = 0.3) -> None:
    """Seeded random weights, rounded to fp16 values, at a scale where every layer's output carries
    information.

    "N" below is zero-mean unit-variance (uniform) noise. Matrices: N / sqrt(fan_in), x `conv_gain`
    for the conv feature encoder (whose GELUs would otherwise shrink the signal layer by layer), x `qk_gain` for attention queries and keys and x `v_gain` for
    values (attention stays selective and the residual stream dominates, as in trained models,
    instead of every frame collapsing onto the same vector after a few layers). Norms: weight
    1 + 0.1 N, bias 0.1 N; other biases 0.1 N; embeddings N; weight-norm gains such that each
    positional-conv output has unit variance.
    """
    import torch

    rng = np.random.default_rng(seed)
    root12 = np.float32(math.sqrt(12.0))

    def normal(shape):
        # Zero-mean, unit-variance uniform noise: the scale is what matters, and BERT-large's 330M
        # values come several times faster than Gaussian ones.
        x = rng.random(tuple(shape), dtype=np.float32)
        x -= 0.5
        x *= root12
        return x

    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layer_norm" in name or "LayerNorm" in name:
                value = 1 + 0.1 * normal(p.shape) if name.endswith("weight") else 0.1 * normal(p.shape)
            elif name.endswith("weight_g") or name.endswith("original0"):
                # ||w_k|| = g_k: out variance = sum_k g_k^2 / out_channels for unit inputs.
                out_channels = module.get_parameter(name.replace("weight_g", "weight_v").replace(
                    "original0", "original1")).shape[0]
                value = math.sqrt(out_channels / p.numel()) * (1 + 0.1 * normal(p.shape))
            elif "embeddings" in name or name == "masked_spec_embed":
                value = normal(p.shape)
            elif p.ndim >= 2:
                gain = conv_gain if "feature_extractor" in name else 1.0
                if any(f".{n}." in name for n in ("q_proj", "k_proj", "query", "key")):
                    gain = qk_gain
                elif any(f".{n}." in name for n in ("v_proj", "value")):
                    gain = v_gain
                value = normal(p.shape) * np.float32(gain / math.sqrt(p[0].numel()))
            else:
                value = 0.1 * normal(p.shape)
            p.copy_(torch.from_numpy(value.astype(np.float16).astype(np.float32)))


def _build(cls, config):
    """`cls(config)` without torch's default initialisation (built on the meta device, then given
    storage): every parameter is overwritten by `randomize_`, and buffers are rebuilt here."""
    import torch

    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device="cpu").eval()
    for name, buffer in model.named_buffers():
        if not name.endswith("position_ids"):
            raise RuntimeError(f"no rule to rebuild buffer {name}")
        buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    return model


def build_hubert(seed: int = 0, overrides: dict[str, Any] | None = None):
    """Upstream `HubertInferenceModel` from the shipped config (+ overrides), random weights, eval mode."""
    import_upstream()
    from types import SimpleNamespace

    from feature_extractor.cnhubert import HubertInferenceModel

    config = _config(HUBERT_NAME, overrides)
    cfg = SimpleNamespace(**config)
    cfg.conv_pos_batch_norm = config.get("conv_pos_batch_norm", False)
    with _quiet_weight_norm():
        model = _build(HubertInferenceModel, cfg)
    randomize_(model, seed, conv_gain=1.6)
    return model


def build_roberta(seed: int = 0, overrides: dict[str, Any] | None = None):
    """Upstream `BertForMaskedLM` from the shipped config (+ overrides), random weights, eval mode."""
    import_upstream()
    from types import SimpleNamespace

    from text.chinese_bert import BertForMaskedLM

    model = _build(BertForMaskedLM, SimpleNamespace(**_config(ROBERTA_NAME, overrides)))
    randomize_(model, seed)
    return model


def write_hubert_folder(folder: str | Path, seed: int = 0, overrides: dict[str, Any] | None = None) -> Path:
    """Write `config.json`, `preprocessor_config.json` and a torch-saved fp16 `pytorch_model.bin`."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_hubert(seed, overrides)
    torch.save(fp16_state_dict(model), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(_config(HUBERT_NAME, overrides), indent=2))
    shutil.copy(shipped_folder(HUBERT_NAME) / "preprocessor_config.json", folder)
    return folder


def write_roberta_folder(folder: str | Path, seed: int = 0, overrides: dict[str, Any] | None = None,
                         *, keep_oracle: bool = False) -> Path:
    """Write `config.json`, the real `tokenizer.json` and a torch-saved fp16 `pytorch_model.bin`.

    keep_oracle: keep the built upstream model as this folder's oracle (`load_upstream_roberta` then
    returns it instead of loading the folder again; the values are identical, as the saved file holds
    the same fp16 numbers), which saves a second BERT-large in memory and its load time."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_roberta(seed, overrides)
    torch.save(fp16_state_dict(model), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(_config(ROBERTA_NAME, overrides), indent=2))
    shutil.copy(shipped_folder(ROBERTA_NAME) / "tokenizer.json", folder)
    if keep_oracle:
        from text.chinese_bert import load_tokenizer

        _ORACLES[("roberta", str(folder))] = (model, load_tokenizer(str(folder)))
    return folder


def model_folder(kind: str, seed: int = 0, overrides: dict[str, Any] | None = None) -> Path:
    """A random-weight model folder of `kind` ("hubert" or "roberta"), written once per process into a
    temporary `moyoyo/<name>/` tree that is removed at exit (BERT keeps its built model as oracle)."""
    key = (kind, seed, json.dumps(overrides or {}, sort_keys=True))
    if key not in _FOLDERS:
        root = Path(tempfile.mkdtemp(prefix=f"primespeech-oracle-{kind}-"))
        atexit.register(shutil.rmtree, root, True)
        if kind == "hubert":
            _FOLDERS[key] = write_hubert_folder(root / "moyoyo" / HUBERT_NAME, seed, overrides)
        elif kind == "roberta":
            _FOLDERS[key] = write_roberta_folder(root / "moyoyo" / ROBERTA_NAME, seed, overrides,
                                                 keep_oracle=True)
        else:
            raise ValueError(f"unknown encoder kind {kind!r}")
    return _FOLDERS[key]


def load_upstream_hubert(folder: str | Path):
    """Upstream's `CNHubert` loaded from `folder` by its own loader (cached per folder)."""
    import_upstream()
    from feature_extractor.cnhubert import CNHubert

    key = ("hubert", str(folder))
    if key not in _ORACLES:
        with _quiet_weight_norm():
            _ORACLES[key] = CNHubert(str(folder)).eval()
    return _ORACLES[key]


def load_upstream_roberta(folder: str | Path):
    """(model, tokenizer) loaded from `folder` by upstream's `text.chinese_bert` (cached per folder)."""
    import_upstream()
    from text import chinese_bert

    key = ("roberta", str(folder))
    if key not in _ORACLES:
        _ORACLES[key] = (chinese_bert.load_model(str(folder)).eval(), chinese_bert.load_tokenizer(str(folder)))
    return _ORACLES[key]


def release_upstream(folder: str | Path | None = None) -> None:
    """Drop cached upstream models (all, or those of one folder) to free memory."""
    for key in [k for k in _ORACLES if folder is None or k[1] == str(folder)]:
        del _ORACLES[key]


def hubert_reference(folder: str | Path, wave: np.ndarray) -> np.ndarray:
    """Upstream's last hidden state [T, 768] for a 16 kHz waveform, called as TTS.py does (`.model`,
    no feature-extractor normalisation)."""
    import torch

    model = load_upstream_hubert(folder)
    with torch.no_grad():
        out = model.model(torch.from_numpy(np.asarray(wave, dtype=np.float32))[None])["last_hidden_state"]
    return out[0].numpy()


def roberta_hidden_states(folder: str | Path, text: str) -> list[np.ndarray]:
    """Upstream's hidden_states (embeddings, then each layer), each [L, hidden], for one text."""
    import torch

    model, tokenizer = load_upstream_roberta(folder)
    with torch.no_grad():
        out = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)
    return [h[0].numpy() for h in out["hidden_states"]]


def roberta_token_ids(folder: str | Path, text: str) -> list[int]:
    """Upstream tokenizer's ids (with [CLS]/[SEP]) for `text`."""
    _, tokenizer = load_upstream_roberta(folder)
    return tokenizer(text, return_tensors="pt")["input_ids"][0].tolist()


def bert_feature_reference(folder: str | Path, text: str, word2ph: list[int]) -> np.ndarray:
    """Upstream `text.chinese_bert.get_bert_feature` -> [1024, sum(word2ph)]."""
    import_upstream()
    from text import chinese_bert

    model, tokenizer = load_upstream_roberta(folder)
    return chinese_bert.get_bert_feature(model, tokenizer, text, word2ph, "cpu").numpy()


def serve_upstream_timing(hubert_dir: str, roberta_dir: str, inputs: str, out: str) -> None:
    """A timing server for `bench.encoders`, run in a fresh process: loads upstream's HuBERT and BERT
    with upstream's loaders, saves their outputs on the inputs in `inputs` (.npz: `wave` at 16 kHz
    with the 0.6 s pad appended, `text`, `word2ph`) to `out`, prints one JSON line with the torch
    set-up, then for each line "hubert" or "bert" on stdin times one call (as TTS.py makes it) and
    prints its seconds as JSON; "quit" ends. Interleaving calls with ours keeps both sides under
    the same machine load."""
    import sys
    import time

    import torch

    data = np.load(inputs)
    wave, text, word2ph = data["wave"], str(data["text"]), [int(n) for n in data["word2ph"]]
    load_upstream_hubert(hubert_dir)
    load_upstream_roberta(roberta_dir)
    calls = {"hubert": lambda: hubert_reference(hubert_dir, wave),
             "bert": lambda: bert_feature_reference(roberta_dir, text, word2ph)}
    np.savez(out, **{name: fn() for name, fn in calls.items()})  # also the warm-up
    print(json.dumps({"torch": torch.__version__, "torch_threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        start = time.perf_counter()
        calls[name]()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":  # python -m primespeech_devtools.oracle.encoders HUBERT_DIR ROBERTA_DIR INPUTS OUT
    import sys

    serve_upstream_timing(*sys.argv[1:5])
