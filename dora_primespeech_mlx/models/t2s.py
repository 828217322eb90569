"""The T2S "s1" GPT of GPT-SoVITS (AR/models/t2s_model.py) in MLX: phones + BERT features -> semantic codes.

Architecture: text tokens (phone embedding + projected BERT feature + alpha-scaled sinusoidal positions)
followed by audio tokens (code embedding + its own alpha-scaled positions, starting at 0 again) run
through a post-norm transformer encoder without a final norm; `ar_predict_layer` (no bias) gives the
logits of the next code. In the prefill, text rows attend to all text and no audio, audio rows to all
text and causally to audio; later steps attend to the whole cache.

Decoding API (what `generate.py` calls): `cache = model.make_cache(left_padding)`,
`model.prefill(x, n_text, cache)`, then `model.step(tokens, position, cache)` once per code, and
`cache.filter(rows)` to drop rows. Rows of a batch are left-padded to a common text length; padded
positions are never attended to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import PrimeSpeechError
from .base import BaseModelArgs

logger = logging.getLogger(__name__)

KIND = "t2s"
FRAME_RATE = 50  # semantic codes per second; early_stop_num = FRAME_RATE * max_sec
WINDOW_STEP = 32  # granularity of the cache window a decode step attends over
_PREFIX = "model."


@dataclass
class ModelArgs(BaseModelArgs):
    """Hyper-parameters, from `config['model']` of the checkpoint (+ `config['data']['max_sec']`)."""

    vocab_size: int = 1025
    phoneme_vocab_size: int = 732
    embedding_dim: int = 512
    hidden_dim: int = 512
    head: int = 16
    n_layer: int = 24
    EOS: int = 1024
    max_sec: int = 54
    bert_dim: int = 1024
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.EOS != self.vocab_size - 1:
            raise PrimeSpeechError(f"unsupported T2S config: EOS {self.EOS} is not vocab_size - 1 "
                                   f"({self.vocab_size - 1}); is this a GPT-SoVITS s1 checkpoint?")
        if self.embedding_dim != self.hidden_dim or self.hidden_dim % self.head:
            raise PrimeSpeechError(f"unsupported T2S config: embedding_dim {self.embedding_dim}, hidden_dim "
                                   f"{self.hidden_dim}, head {self.head}")

    @property
    def early_stop_num(self) -> int:
        """Upstream's TTS stops after 50 * max_sec generated codes."""
        return FRAME_RATE * self.max_sec

    @classmethod
    def from_checkpoint_config(cls, config: dict[str, Any]) -> ModelArgs:
        """Build from an official checkpoint's `config` (the training yaml)."""
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise PrimeSpeechError("the GPT checkpoint has no config['model']: not a GPT-SoVITS s1 .ckpt")
        params = dict(config["model"])
        max_sec = (config.get("data") or {}).get("max_sec")
        if max_sec is None:
            logger.warning("GPT checkpoint config has no data.max_sec; using %d", cls.max_sec)
        else:
            params["max_sec"] = int(max_sec)
        return cls.from_dict(params)


# ----------------------------------------------------------------------------------------------- layers


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dims: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dims)

    def __call__(self, ids: mx.array) -> mx.array:
        return self.word_embeddings(ids)


def sine_table(n: int, dims: int) -> np.ndarray:
    """Upstream's sinusoid table [n, dims]: sin on even, cos on odd channels, angles formed in float32."""
    position = np.arange(n, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dims, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / dims)))
    angle = (position * div.astype(np.float32)).astype(np.float64)
    table = np.empty((n, dims), dtype=np.float32)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)
    return table


class SinePositionalEmbedding(nn.Module):
    """`x + alpha * pe[start:start+T]` (no sqrt(d) scaling of x); alpha is learned."""

    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims
        self.alpha = mx.ones((1,))
        self._pe = mx.array(sine_table(4000, dims))

    def table(self, n: int) -> mx.array:
        """pe rows 0..n-1 at least (without alpha), [>= n, dims]."""
        if n > self._pe.shape[0]:
            self._pe = mx.array(sine_table(max(n, 2 * self._pe.shape[0]), self.dims))
        return self._pe

    def scale(self, pe: mx.array) -> mx.array:
        return self.alpha * pe.astype(self.alpha.dtype)

    def positions(self, start: int, n: int) -> mx.array:
        """alpha * pe[start:start+n], [n, dims]."""
        return self.scale(self.table(start + n)[start:start + n])

    def __call__(self, x: mx.array, start: int = 0) -> mx.array:
        return x + self.positions(start, x.shape[-2])


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's parameters: q|k|v stacked in one `in_proj` [3*dims, dims]."""

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dims // heads)
        self.in_proj_weight = mx.zeros((3 * dims, dims))
        self.in_proj_bias = mx.zeros((3 * dims,))
        self.out_proj = nn.Linear(dims, dims)

    def in_projection(self, x: mx.array) -> mx.array:
        """q|k|v [..., 3*dims] of x [..., dims]: one product, split afterwards."""
        if "in_proj" in self:  # quantized
            return self.in_proj(x)
        return mx.addmm(self.in_proj_bias, x, self.in_proj_weight.T)

    def quantize(self, group_size: int, bits: int) -> None:
        """Replace the packed q|k|v weight by a QuantizedLinear `in_proj` (see `quantize`)."""
        dims = self.in_proj_weight.shape[1]
        linear = nn.Linear(dims, 3 * dims)
        linear.weight, linear.bias = self.in_proj_weight, self.in_proj_bias
        self.in_proj = nn.QuantizedLinear.from_linear(linear, group_size, bits)
        del self["in_proj_weight"], self["in_proj_bias"]

    def _heads(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        B, L, D = x.shape
        qkv = self.in_projection(x).reshape(B, L, 3, self.heads, D // self.heads).transpose(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, out: mx.array) -> mx.array:
        B, H, L, Dh = out.shape
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, H * Dh))

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: KVCache | None = None) -> mx.array:
        q, k, v = self._heads(x)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        return self._merge(mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask))

    def step(self, x: mx.array, kv: mx.array, offset: mx.array,
             bias: mx.array) -> tuple[mx.array, mx.array | None, mx.array]:
        """One new position on a whole preallocated keys|values buffer [2, B, heads, capacity, head_dim]:
        its k and v are written at `offset` (in place, one update), and attention reads the first
        W = bias.shape[-1] positions, `bias` (0 or -inf, [B or 1, 1, 1, W]) hiding those beyond
        `offset`. Shapes depend on W only, so a compiled step is reused for many positions. Returns the
        output projection without its bias (the caller adds it with the residual), the bias, and kv.

        Attention is spelled out: MLX's fused kernel serves head sizes 64-256, not this model's 32.
        q|k|v come out of one bias addition laid out [3, B, heads, head_dim], so q of every row and
        head is one contiguous batch for the products and k|v one update."""
        B, W, H = x.shape[0], bias.shape[-1], self.heads
        if "in_proj" in self:  # quantized: the layer adds its bias
            qkv = mx.contiguous(self.in_proj(x).reshape(B, 3, H, -1).swapaxes(0, 1))
        else:
            qkv = (x.reshape(B, -1) @ self.in_proj_weight.T).reshape(B, 3, H, -1).swapaxes(0, 1) + \
                self.in_proj_bias.reshape(3, 1, H, -1)
        kv = mx.slice_update(kv, qkv[1:, :, :, None], offset, axes=(3,))
        q = qkv[:1].reshape(B, H, 1, -1)  # a slice, not qkv[0]: MLX indexes an axis with an int by a gather
        scores = q @ kv[0, :, :, :W].swapaxes(-1, -2)
        probs = mx.softmax(scores * self.scale + bias, axis=-1, precise=True)
        out, out_bias = _product(self.out_proj, (probs @ kv[1, :, :, :W]).reshape(B, 1, -1))
        return out, out_bias, kv


def _product(linear: nn.Module, x: mx.array) -> tuple[mx.array, mx.array | None]:
    """A decode step's product `x @ W.T` and the bias still to add (None: `linear` added it). MLX's GPU
    backends take their matrix-vector kernels only for a product without a bias (with one, CUDA's
    goes through a GEMM with a bias epilogue, much slower for one row); the bias is then added with
    the residual or the ReLU that follows, in the same fused kernel."""
    if isinstance(linear, nn.Linear) and "bias" in linear:  # rows as the M of one product, not a batch
        return (x.reshape(-1, x.shape[-1]) @ linear.weight.T).reshape(*x.shape[:-1], -1), linear.bias
    return linear(x), None


def _plus(x: mx.array, bias: mx.array | None) -> mx.array:
    return x if bias is None else x + bias


class TransformerEncoderLayer(nn.Module):
    """Post-norm: x = LN1(x + MHA(x)); x = LN2(x + W2 relu(W1 x))."""

    def __init__(self, dims: int, heads: int, eps: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dims, heads)
        self.linear1 = nn.Linear(dims, 4 * dims)
        self.linear2 = nn.Linear(4 * dims, dims)
        self.norm1 = nn.LayerNorm(dims, eps=eps)
        self.norm2 = nn.LayerNorm(dims, eps=eps)

    def feed_forward(self, x: mx.array) -> mx.array:
        return self.norm2(x + self.linear2(nn.relu(self.linear1(x))))

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: KVCache | None = None) -> mx.array:
        return self.feed_forward(self.norm1(x + self.self_attn(x, mask, cache)))

    def step(self, x: mx.array, kv: mx.array, offset: mx.array, bias: mx.array) -> tuple[mx.array, mx.array]:
        h, h_bias, kv = self.self_attn.step(x, kv, offset, bias)
        x = self.norm1(x + _plus(h, h_bias))
        f, f_bias = _product(self.linear1, x)
        g, g_bias = _product(self.linear2, nn.relu(_plus(f, f_bias)))
        return self.norm2(x + _plus(g, g_bias)), kv


class TransformerEncoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [TransformerEncoderLayer(args.hidden_dim, args.head, args.norm_eps)
                       for _ in range(args.n_layer)]


# -------------------------------------------------------------------------------------------- KV cache


class KVCache:
    """One layer's keys and values stacked in one buffer [2, B, heads, capacity, head_dim] (a decode
    step writes both with one update), preallocated and grown `step` positions at a time."""

    step = 256

    def __init__(self):
        self.kv: mx.array | None = None
        self.offset = 0

    @property
    def keys(self) -> mx.array | None:
        return None if self.kv is None else self.kv[0]

    @property
    def values(self) -> mx.array | None:
        return None if self.kv is None else self.kv[1]

    @property
    def capacity(self) -> int:
        return 0 if self.kv is None else self.kv.shape[3]

    def reserve(self, n: int, like: mx.array) -> None:
        """Make room for `n` more positions (like: an array [B, heads, *, head_dim] of the right dtype)."""
        if self.offset + n <= self.capacity:
            return
        B, H, _, Dh = like.shape
        grow = ((self.offset + n - self.capacity + self.step - 1) // self.step) * self.step
        new = mx.zeros((2, B, H, grow, Dh), like.dtype)
        self.kv = new if self.kv is None else mx.concatenate([self.kv, new], axis=3)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        prev = self.offset
        self.reserve(keys.shape[2], keys)
        self.offset += keys.shape[2]
        self.kv[:, :, :, prev:self.offset, :] = mx.stack([keys, values])
        return self.kv[0, :, :, :self.offset, :], self.kv[1, :, :, :self.offset, :]

    def filter(self, index: mx.array) -> None:
        """Keep the rows at `index`."""
        self.kv = self.kv[:, index]

    @property
    def state(self) -> list[mx.array]:
        return [] if self.kv is None else [self.kv]


class Cache:
    """Every layer's KVCache for one batch, and each row's left padding: a row's first
    `left_padding[i]` positions are padding, never attended to."""

    def __init__(self, n_layers: int, left_padding: Sequence[int] | None = None):
        self.layers = [KVCache() for _ in range(n_layers)]
        self.left_padding = list(left_padding) if left_padding is not None and any(left_padding) else None
        self.valid_from = None if self.left_padding is None else \
            mx.array(np.asarray(self.left_padding, dtype=np.int32)[:, None])
        self.windows: dict[int, mx.array] = {}

    @property
    def offset(self) -> int:
        return self.layers[0].offset

    def filter(self, rows: Sequence[int]) -> None:
        """Keep the rows at positions `rows` (in that order), e.g. those still decoding."""
        index = mx.array(np.asarray(rows, dtype=np.int32))
        for layer in self.layers:
            layer.filter(index)
        if self.left_padding is not None:
            self.left_padding = [self.left_padding[i] for i in rows]
            self.valid_from = self.valid_from[index]

    @property
    def state(self) -> list[mx.array]:
        return [a for layer in self.layers for a in layer.state]


def prefill_mask(n_text: int, n_audio: int, left_padding: Sequence[int] | None = None) -> mx.array | None:
    """Boolean attention mask (True = may attend) of a prefill over `n_text` text then `n_audio` audio
    positions: text rows see all text and no audio; audio rows see all text and audio causally.
    [L, L], or [B, 1, L, L] for rows left-padded by `left_padding` (a pad position sees only itself;
    its output is never used). None when all may attend to all (text only, nothing padded)."""
    pads = list(left_padding) if left_padding is not None and any(left_padding) else None
    if n_audio == 0 and pads is None:
        return None
    n = n_text + n_audio
    row = np.arange(n)[:, None]
    col = np.arange(n)[None, :]
    allowed = (col < n_text) | ((row >= n_text) & (col <= row))
    if pads is None:
        return mx.array(allowed)
    masks = [(((row >= pad) & (col >= pad) & allowed) | ((row < pad) & (col == row))) for pad in pads]
    return mx.array(np.stack(masks)[:, None])


# ------------------------------------------------------------------------------------------------ model


class Model(nn.Module):
    """Text2SemanticDecoder's inference path. Parameter names follow upstream's state dict."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        d = args.embedding_dim
        self.bert_proj = nn.Linear(args.bert_dim, d)
        self.ar_text_embedding = TokenEmbedding(args.phoneme_vocab_size, d)
        self.ar_text_position = SinePositionalEmbedding(d)
        self.ar_audio_embedding = TokenEmbedding(args.vocab_size, d)
        self.ar_audio_position = SinePositionalEmbedding(d)
        self.h = TransformerEncoder(args)
        self.ar_predict_layer = nn.Linear(args.hidden_dim, args.vocab_size, bias=False)
        self._compiled: dict[Callable | None, Callable] = {}  # step_then's compiled functions

    @property
    def layers(self) -> list[TransformerEncoderLayer]:
        return self.h.layers

    def embed_text(self, phones: mx.array, bert: mx.array) -> mx.array:
        """phones [B, T] int, bert [B, bert_dim, T] -> [B, T, D]."""
        bert = bert.swapaxes(1, 2).astype(self.bert_proj.weight.dtype)
        return self.ar_text_position(self.ar_text_embedding(phones) + self.bert_proj(bert))

    def embed_audio(self, codes: mx.array, start: int = 0) -> mx.array:
        """codes [B, P] int -> [B, P, D], positions start..start+P."""
        return self.ar_audio_position(self.ar_audio_embedding(codes), start)

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: Cache | None = None,
                 last_only: bool = False, layer_by_layer: bool = False) -> mx.array:
        """Embedded tokens [B, L, D] -> logits [B, L, vocab] ([B, vocab] with last_only); with
        layer_by_layer, each layer's output (and cache) is evaluated before the next is built."""
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, None if cache is None else cache.layers[i])
            if layer_by_layer:
                mx.eval(x, *([] if cache is None else cache.layers[i].state))
        if last_only:
            x = x[:, -1]
        return self.ar_predict_layer(x)

    # -- decoding API ----------------------------------------------------------------------------------

    def make_cache(self, left_padding: Sequence[int] | None = None) -> Cache:
        """An empty cache for rows left-padded by `left_padding` (None: one row or none padded)."""
        return Cache(len(self.layers), left_padding)

    def prefill(self, x: mx.array, n_text: int, cache: Cache) -> mx.array:
        """Run the prefill of x [B, L, D] (`n_text` text positions, left padding included, then the
        prompt codes) into `cache`: the logits [B, vocab] of the first code to generate.

        Evaluated layer by layer: as one graph, a 12-row prefill kept 0.45-0.77 GB of activations
        alive on an H100 (MLX's GPU backends keep each queued kernel's inputs until it has run, and
        the host queues all the layers before the first has run); layer by layer, 0.06 GB above the
        cache, at the same T2S time."""
        mask = prefill_mask(n_text, x.shape[1] - n_text, cache.left_padding)
        return self(x, mask, cache, last_only=True, layer_by_layer=True)

    @property
    def compiled_decoding(self) -> bool:
        """Whether `step` is this class's compiled MLX step, not another step set on the instance
        (which decodes from packed weights of its own, not this model's parameters)."""
        return "step" not in self.__dict__

    def step(self, tokens: mx.array, position: int, cache: Cache) -> mx.array:
        """Logits [B, vocab] of the codes after `tokens` [B], which sit at audio position `position`;
        their keys and values go into the next cache position. Runs `decode_step` compiled on whole
        cache buffers, attending over a window that grows WINDOW_STEP positions at a time: shapes
        change only then, so the compiled step is reused in between."""
        return self.step_then(None, (), tokens, position, cache)

    def step_then(self, finish: Callable | None, state: tuple, tokens: mx.array, position: int,
                  cache: Cache) -> Any:
        """`step`, then `finish(logits, *state)` (e.g. sampling) traced into the same compiled
        function, whose outputs are returned instead of the logits: one launch of one graph per
        token, nothing read back. Compiled once per `finish`, retraced only when shapes change."""
        offset = cache.offset
        for c in cache.layers:
            c.reserve(1, c.keys)
            c.offset += 1
        width = min(-(-(offset + 1) // WINDOW_STEP) * WINDOW_STEP, cache.layers[0].capacity)
        if width not in cache.windows:
            cache.windows[width] = mx.arange(width)
        pe = self.ar_audio_position.table(position + 1)[position:position + 1]
        kv = [c.kv for c in cache.layers]
        call = (tokens, pe, mx.array(offset, dtype=mx.int32), cache.windows[width], kv, state)
        decode = self._compiled.get(finish)
        if decode is None:
            def decode_then(tokens, pe, offset, window, kv, state, valid_from=None):
                logits, kv = self.decode_step(tokens, pe, offset, window, kv, valid_from)
                return (logits if finish is None else finish(logits, *state)), kv

            # the parameters are implicit inputs, read at every call: weights changed later are used
            decode = self._compiled[finish] = mx.compile(decode_then, inputs=[self.state])
        out, kv = decode(*call) if cache.valid_from is None else decode(*call, cache.valid_from)
        for c, buffer in zip(cache.layers, kv, strict=True):
            c.kv = buffer
        return out

    def decode_step(self, tokens: mx.array, pe: mx.array, offset: mx.array, window: mx.array,
                    kv: list[mx.array], valid_from: mx.array | None = None) -> tuple[mx.array, list[mx.array]]:
        """The traced body of `step`. tokens [B] int; pe: the unscaled sinusoid row [1, D] of their
        audio position; offset: their cache index; window: arange(W), W > offset, the cache positions
        attention reads; kv: every layer's keys|values buffer [2, B, H, capacity, Dh], returned
        updated; valid_from [B, 1]: each row's first real cache position, or None."""
        x = (self.ar_audio_embedding(tokens) + self.ar_audio_position.scale(pe))[:, None]
        allowed = window <= offset
        if valid_from is not None:
            allowed = allowed & (window >= valid_from)
        # one additive mask for all layers, in the activations' dtype (a float32 one would upcast)
        bias = mx.where(allowed, 0.0, -mx.inf).astype(x.dtype).reshape(-1, 1, 1, window.shape[0])
        out = []
        for layer, buffer in zip(self.layers, kv, strict=True):
            x, buffer = layer.step(x, buffer, offset, bias)
            out.append(buffer)
        return self.ar_predict_layer(x[:, -1]), out

    @staticmethod
    def sanitize(weights: dict[str, Any]) -> dict[str, Any]:
        """Map an official s1 state dict onto this model's parameter names.

        Strips the `model.` prefix of the Lightning module. The attention's packed `in_proj_weight`
        [3*D, D] / `in_proj_bias` are kept packed: at batch 1 a decode step is bound by per-product
        overhead and weight streaming, and one [D, 3D] product per layer beats three [D, D] ones;
        q, k and v are split from its output. Arrays keep their stored dtype (fp16 in official files,
        which is exact); loading casts to the runtime dtype. Upstream's own training-only leftovers,
        if a file has them, are dropped; anything else unknown stays and strict loading reports it.
        """
        out = {}
        for key, value in weights.items():
            if key.startswith(_PREFIX):
                key = key[len(_PREFIX):]
            if key.startswith(("ar_accuracy_metric.", "loss_fct.")):
                continue
            out[key] = value
        return out


QUANT_BITS = (8, 4)
QUANT_GROUP = 64


def quantize(model: Model, bits: int, group_size: int = QUANT_GROUP) -> Model:
    """Quantize, in place, the weights every decode step reads (each layer's q|k|v, output and
    feed-forward products, and the logits head) to `bits`-bit integers with a scale and bias per
    `group_size` values (`mx.quantize`); the embeddings, the norms and the BERT projection (prefill
    only) keep their dtype. A decode step streams the weights once per token, so fewer bytes per
    weight is a cheaper step where it is bound by memory. For the model's own MLX step only."""
    if bits not in QUANT_BITS:
        raise PrimeSpeechError(f"T2S weights quantize to {' or '.join(map(str, QUANT_BITS))} bits, not {bits}")
    if not model.compiled_decoding:
        raise PrimeSpeechError("this T2S model's decode step was replaced by one reading packed weights of its "
                               "own, which cannot be quantized: quantize the model before its step is replaced")
    for layer in model.layers:
        layer.self_attn.quantize(group_size, bits)
    nn.quantize(model, group_size, bits, class_predicate=lambda path, module: isinstance(module, nn.Linear)
                and path != "bert_proj")
    model._compiled.clear()
    mx.eval(model.parameters())
    return model


# ------------------------------------------------------------------------------------------------ load
