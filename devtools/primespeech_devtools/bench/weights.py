"""Random-weight models made without torch, for the benchmarks' ours-only runs (oracle not installed).

A model of the shipped defaults (full size unless overridden) is initialised by MLX, written as a
converted folder (safetensors + config.json) and loaded back through the package's own `load_model`,
as a converted voice is. The figures time our code on weights of the right shapes; with the oracle
installed the benchmarks use upstream's seeded weights instead, so that both sides share them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

MODELS = {kind: f"dora_primespeech_mlx.models.{kind}" for kind in ("t2s", "sovits", "hubert", "roberta")}
# Tokenizer vocabulary: the BERT specials, then one token per CJK character and common punctuation, so
# that Chinese text gets one token per character as with the real chinese-roberta-wwm-ext-large.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHARACTERS = "".join(chr(c) for c in range(0x4E00, 0x9FA6)) + "，。！？、；：“”‘’（）《》…—0123456789"


def random_model_folder(kind: str, folder: str | Path, overrides: dict[str, Any] | None = None,
                        seed: int = 0) -> Path:
    """Write a random-weight converted `kind` folder ("t2s", "sovits", "hubert", "roberta") and return it.

    The T2S output row of EOS is zeroed (as the oracle's bench checkpoint has it) so that greedy decoding
    never stops early; RoBERTa gets a `tokenizer.json` of `SPECIAL_TOKENS` + `CHARACTERS`."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    from dora_primespeech_mlx.loading import save_converted

    module = importlib.import_module(MODELS[kind])
    args = module.ModelArgs.from_dict({**module.ModelArgs().to_dict(), **(overrides or {})})
    mx.random.seed(seed)
    model = module.Model(args)
    weights = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    if kind == "t2s":
        weights["ar_predict_layer.weight"][args.EOS] = 0.0
    folder = save_converted(folder, weights, {"model_type": module.KIND, **args.to_dict()}, kind=module.KIND)
    if kind == "roberta":
        write_tokenizer(folder / module.TOKENIZER_FILE, args.vocab_size)
    return folder


def load_random_model(kind: str, folder: str | Path, overrides: dict[str, Any] | None = None, seed: int = 0):
    """`random_model_folder`, then the model loaded from it by the package's loader."""
    from dora_primespeech_mlx import loading

    return loading.load_model(kind, random_model_folder(kind, folder, overrides, seed))


def write_tokenizer(path: str | Path, vocab_size: int) -> Path:
    """A BERT WordPiece `tokenizer.json` (first `vocab_size` tokens of the vocabulary above)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokens = [*SPECIAL_TOKENS, *CHARACTERS][:vocab_size]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(path))
    return Path(path)
