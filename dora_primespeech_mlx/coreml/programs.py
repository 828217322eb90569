"""The two encoders as MIL programs, built with coremltools' MIL builder from our converted weights.

Inputs are the converted MLX weights (numpy, keys and layouts as `models.hubert` / `models.roberta`
`sanitize` leave them), so Core ML and MLX run the very same numbers. Each weight becomes one named
MIL constant (`const_name(key)`), stored as float16 unless it feeds a float32 part of the graph;
`package_layout` holds the only layout changes (MLX's channels-last conv weights back to MIL's
[out, in, kernel]; row 0 of BERT's token-type table). `expected_constants` states, independently of
the builders, which constant each package must hold, so a saved package can be checked against its
source weights.

Precision: the graph computes in float16 (what the Neural Engine runs), except the HuBERT waveform
stage — the first conv and its per-channel GroupNorm, whose statistics run over up to 34k frames —
which stays in float32. LayerNorm epsilons are rounded to float16 (BERT's 1e-12 becomes the smallest
float16 subnormal, 6e-8, instead of flushing to 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import PrimeSpeechError

HUBERT_INPUT = "waveform"
BERT_INPUT = "input_ids"
OUTPUT = "hidden_states"

# Audio: up to 10.6 s at 16 kHz; 400 samples is HuBERT's receptive field (one output frame).
HUBERT_MIN_SAMPLES = 400
HUBERT_MAX_SAMPLES = 169_600
HUBERT_DEFAULT_SAMPLES = 80_000
# Text: padded up to the next of these lengths (a single enumerated input can run on the Neural Engine
# for every shape; range shapes only for their default). Pad ids (0) are masked out of attention.
BERT_LENGTHS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
BERT_DEFAULT_LENGTH = 64
BERT_PAD_ID = 0
_MASK_VALUE = -1.0e4  # exp() of it is exactly 0 in float16 and float32; finfo.min would overflow in fp16


def const_name(key: str) -> str:
    """The MIL constant name that holds weight `key` (MIL names allow no dots)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def is_conv_weight(key: str, value: np.ndarray) -> bool:
    return key.endswith("conv.weight") and value.ndim == 3


def package_layout(key: str, value: np.ndarray) -> np.ndarray:
    """Weight `key` as the package stores it: conv weights [out, kernel, in] -> [out, in, kernel]; of BERT's
    token-type table only row 0 (GPT-SoVITS encodes single sentences: every token type is 0)."""
    if is_conv_weight(key, value):
        return np.swapaxes(value, 1, 2)
    if key.endswith("token_type_embeddings.weight"):
        return value[0]
    return value


def _fp16_epsilon(eps: float) -> np.float16:
    value = np.float16(eps)
    return value if value > 0 else np.float16(2.0**-24)


@dataclass(frozen=True)
class HubertShape:
    """The HuBERT hyper-parameters the graph needs (from the converted config)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_bias: bool
    num_conv_pos_embeddings: int
    num_conv_pos_embedding_groups: int
    feat_proj_layer_norm: bool
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config: Mapping) -> HubertShape:
        from ..models.hubert import ModelArgs

        a = ModelArgs.from_dict(dict(config))
        return cls(a.hidden_size, a.num_hidden_layers, a.num_attention_heads, tuple(a.conv_kernel),
                   tuple(a.conv_stride), a.conv_bias, a.num_conv_pos_embeddings,
                   a.num_conv_pos_embedding_groups, a.feat_proj_layer_norm, a.layer_norm_eps)


@dataclass(frozen=True)
class BertShape:
    """The BERT hyper-parameters the graph needs, and how many layers it runs (to the same hidden state,
    hidden_states[-3] for GPT-SoVITS, as `models.roberta` returns)."""

    hidden_size: int
    num_attention_heads: int
    max_position_embeddings: int
    layer_norm_eps: float
    layers_used: int

    @classmethod
    def from_config(cls, config: Mapping) -> BertShape:
        from ..models.roberta import ModelArgs

        a = ModelArgs.from_dict(dict(config))
        return cls(a.hidden_size, a.num_attention_heads, a.max_position_embeddings, a.layer_norm_eps,
                   a.layers_run)


def hubert_keys(shape: HubertShape) -> list[str]:
    """Every converted HuBERT weight the exported graph uses."""
    keys = []
    for i in range(len(shape.conv_kernel)):
        keys.append(f"feature_extractor.conv_layers.{i}.conv.weight")
        if shape.conv_bias:
            keys.append(f"feature_extractor.conv_layers.{i}.conv.bias")
    keys += ["feature_extractor.conv_layers.0.layer_norm.weight", "feature_extractor.conv_layers.0.layer_norm.bias"]
    if shape.feat_proj_layer_norm:
        keys += ["feature_projection.layer_norm.weight", "feature_projection.layer_norm.bias"]
    keys += ["feature_projection.projection.weight", "feature_projection.projection.bias",
             "encoder.pos_conv_embed.conv.weight", "encoder.pos_conv_embed.conv.bias",
             "encoder.layer_norm.weight", "encoder.layer_norm.bias"]
    for i in range(shape.num_hidden_layers):
        p = f"encoder.layers.{i}."
        for name in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj",
                     "layer_norm", "feed_forward.intermediate_dense", "feed_forward.output_dense",
                     "final_layer_norm"):
            keys += [p + name + ".weight", p + name + ".bias"]
    return keys


# hubert keys computed in float32 (the waveform stage); every other weight is stored as float16.
def _hubert_fp32_keys() -> set[str]:
    return {"feature_extractor.conv_layers.0.conv.weight", "feature_extractor.conv_layers.0.conv.bias",
            "feature_extractor.conv_layers.0.layer_norm.weight",
            "feature_extractor.conv_layers.0.layer_norm.bias"}


BERT_EMBEDDINGS = "embeddings.{}"
BERT_LAYER = "encoder.layer.{}.{}"


def bert_keys(shape: BertShape) -> list[str]:
    """Every converted BERT weight the exported graph uses (embeddings + the first L-2 layers)."""
    keys = [BERT_EMBEDDINGS.format(n) for n in ("word_embeddings.weight", "position_embeddings.weight",
                                                 "token_type_embeddings.weight", "LayerNorm.weight",
                                                 "LayerNorm.bias")]
    for i in range(shape.layers_used):
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                     "output.dense", "output.LayerNorm"):
            keys += [BERT_LAYER.format(i, name + ".weight"), BERT_LAYER.format(i, name + ".bias")]
    return keys


def expected_constants(kind: str, weights: Mapping[str, np.ndarray], keys: Iterable[str]) -> dict[str, np.ndarray]:
    """{MIL constant name: value} a package of `kind` built from `weights` must hold, bit for bit."""
    fp32 = _hubert_fp32_keys() if kind == "hubert" else set()
    out = {}
    for key in keys:
        if key not in weights:
            raise PrimeSpeechError(f"the converted {kind} weights lack {key}: convert the model again")
        dtype = np.float32 if key in fp32 else np.float16
        out[const_name(key)] = np.ascontiguousarray(package_layout(key, np.asarray(weights[key])).astype(dtype))
    if len(out) != len(set(keys)):
        raise PrimeSpeechError(f"{kind}: two weight names map to one Core ML constant name")
    return out


class _Consts:
    """Creates one named MIL constant per weight, in the package layout and dtype."""

    def __init__(self, kind: str, weights: Mapping[str, np.ndarray], keys: list[str]):
        self.values = expected_constants(kind, weights, keys)
        self.used: set[str] = set()

    def __call__(self, key: str):
        from coremltools.converters.mil import Builder as mb

        name = const_name(key)
        if name in self.used:
            raise PrimeSpeechError(f"internal: weight {key} used twice in one Core ML graph")
        self.used.add(name)
        return mb.const(val=self.values[name], name=name)

    def check_all_used(self, kind: str) -> None:
        unused = sorted(set(self.values) - self.used)
        if unused:
            raise PrimeSpeechError(f"internal: the {kind} Core ML graph leaves weights unused: {unused[:3]}")


def _encoder_layer_post_norm(mb, x, c, names: dict[str, str], heads: int, dims: int, eps: np.float16, bias=None):
    """One post-norm transformer layer (BERT / HuBERT share the maths, not the key names)."""
    def linear(h, name):
        return mb.linear(x=h, weight=c(names[name] + ".weight"), bias=c(names[name] + ".bias"))

    def split(h):
        return mb.transpose(x=mb.reshape(x=h, shape=[1, -1, heads, dims // heads]), perm=[0, 2, 1, 3])

    q, k, v = split(linear(x, "q")), split(linear(x, "k")), split(linear(x, "v"))
    scores = mb.matmul(x=q, y=k, transpose_y=True)
    scores = mb.mul(x=scores, y=np.float16((dims // heads) ** -0.5))
    if bias is not None:
        scores = mb.add(x=scores, y=bias)
    probs = mb.softmax(x=scores, axis=-1)
    ctx = mb.reshape(x=mb.transpose(x=mb.matmul(x=probs, y=v), perm=[0, 2, 1, 3]), shape=[1, -1, dims])
    x = mb.layer_norm(x=mb.add(x=x, y=linear(ctx, "o")), axes=[-1], gamma=c(names["ln1"] + ".weight"),
                      beta=c(names["ln1"] + ".bias"), epsilon=eps)
    h = mb.gelu(x=linear(x, "ff1"), mode="EXACT")
    return mb.layer_norm(x=mb.add(x=x, y=linear(h, "ff2")), axes=[-1], gamma=c(names["ln2"] + ".weight"),
                         beta=c(names["ln2"] + ".bias"), epsilon=eps)


def hubert_program(weights: Mapping[str, np.ndarray], shape: HubertShape):
    """MIL program: `waveform` float32 [1, N] (raw 16 kHz) -> `hidden_states` float16 [1, T, hidden]."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol, types

    c = _Consts("hubert", weights, hubert_keys(shape))
    eps = _fp16_epsilon(shape.layer_norm_eps)
    dims = shape.hidden_size

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol()), dtype=types.fp32)],
                opset_version=ct.target.macOS13)
    def prog(waveform):
        x = mb.expand_dims(x=waveform, axes=[1])  # [1, 1, N]
        for i, s in enumerate(shape.conv_stride):
            p = f"feature_extractor.conv_layers.{i}."
            bias = c(p + "conv.bias") if shape.conv_bias else None
            x = mb.conv(x=x, weight=c(p + "conv.weight"), bias=bias, strides=[s], pad_type="valid")
            if i == 0:
                x = mb.instance_norm(x=x, gamma=c(p + "layer_norm.weight"), beta=c(p + "layer_norm.bias"),
                                     epsilon=np.float32(1e-5))
                x = mb.cast(x=mb.gelu(x=x, mode="EXACT"), dtype="fp16")
            else:
                x = mb.gelu(x=x, mode="EXACT")
        x = mb.transpose(x=x, perm=[0, 2, 1])  # [1, T, C]
        if shape.feat_proj_layer_norm:
            x = mb.layer_norm(x=x, axes=[-1], gamma=c("feature_projection.layer_norm.weight"),
                              beta=c("feature_projection.layer_norm.bias"), epsilon=eps)
        x = mb.linear(x=x, weight=c("feature_projection.projection.weight"),
                      bias=c("feature_projection.projection.bias"))
        kernel = shape.num_conv_pos_embeddings
        pos = mb.conv(x=mb.transpose(x=x, perm=[0, 2, 1]), weight=c("encoder.pos_conv_embed.conv.weight"),
                      bias=c("encoder.pos_conv_embed.conv.bias"), pad_type="custom",
                      pad=[kernel // 2, kernel // 2], groups=shape.num_conv_pos_embedding_groups)
        if kernel % 2 == 0:  # an even kernel with symmetric padding yields one frame too many
            pos = mb.slice_by_index(x=pos, begin=[0, 0, 0], end=[0, 0, -1], end_mask=[True, True, False])
        pos = mb.transpose(x=mb.gelu(x=pos, mode="EXACT"), perm=[0, 2, 1])
        x = mb.layer_norm(x=mb.add(x=x, y=pos), axes=[-1], gamma=c("encoder.layer_norm.weight"),
                          beta=c("encoder.layer_norm.bias"), epsilon=eps)
        for i in range(shape.num_hidden_layers):
            p = f"encoder.layers.{i}."
            names = {"q": p + "attention.q_proj", "k": p + "attention.k_proj", "v": p + "attention.v_proj",
                     "o": p + "attention.out_proj", "ln1": p + "layer_norm",
                     "ff1": p + "feed_forward.intermediate_dense", "ff2": p + "feed_forward.output_dense",
                     "ln2": p + "final_layer_norm"}
            x = _encoder_layer_post_norm(mb, x, c, names, shape.num_attention_heads, dims, eps)
        return mb.identity(x=x, name=OUTPUT)

    c.check_all_used("hubert")
    return prog


def bert_program(weights: Mapping[str, np.ndarray], shape: BertShape):
    """MIL program: `input_ids` int32 [1, T] (pad id 0 masked) -> hidden_states[-3] float16 [1, T, hidden]."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol, types

    c = _Consts("roberta", weights, bert_keys(shape))
    eps = _fp16_epsilon(shape.layer_norm_eps)
    dims = shape.hidden_size

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol()), dtype=types.int32)],
                opset_version=ct.target.macOS13)
    def prog(input_ids):
        e = BERT_EMBEDDINGS.format
        words = mb.gather(x=c(e("word_embeddings.weight")), indices=input_ids, axis=0)
        length = mb.gather(x=mb.shape(x=input_ids), indices=1, axis=0)
        positions = mb.range_1d(start=np.int32(0), end=length, step=np.int32(1))
        pos = mb.gather(x=c(e("position_embeddings.weight")), indices=positions, axis=0)
        x = mb.add(x=mb.add(x=words, y=pos), y=c(e("token_type_embeddings.weight")))  # row 0, see package_layout
        x = mb.layer_norm(x=x, axes=[-1], gamma=c(e("LayerNorm.weight")), beta=c(e("LayerNorm.bias")),
                          epsilon=eps)
        is_pad = mb.cast(x=mb.equal(x=input_ids, y=np.int32(BERT_PAD_ID)), dtype="fp16")
        bias = mb.expand_dims(x=mb.mul(x=is_pad, y=np.float16(_MASK_VALUE)), axes=[1, 2])  # [1, 1, 1, T]
        for i in range(shape.layers_used):
            def n(name, i=i):
                return BERT_LAYER.format(i, name)
            names = {"q": n("attention.self.query"), "k": n("attention.self.key"),
                     "v": n("attention.self.value"), "o": n("attention.output.dense"),
                     "ln1": n("attention.output.LayerNorm"), "ff1": n("intermediate.dense"),
                     "ff2": n("output.dense"), "ln2": n("output.LayerNorm")}
            x = _encoder_layer_post_norm(mb, x, c, names, shape.num_attention_heads, dims, eps, bias)
        return mb.identity(x=x, name=OUTPUT)

    c.check_all_used("roberta")
    return prog
