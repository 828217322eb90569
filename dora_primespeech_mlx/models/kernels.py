"""Element-wise kernels and softmax attention that MLX's CPU backend runs fast.

MLX's compiled CPU kernels vectorise multiply, add, divide and abs, but not minimum, maximum or
select, and its primitive `exp` and `erf` cost about 12 ns per element on x86. GELU and the softmax
exponential are therefore built from the vectorised operations only (errors below 1e-6), and
`attention` uses them on the CPU (on a GPU it is MLX's fused attention). MLX also runs element-wise
kernels on one thread per stream, so models spread independent work over CPU "lanes" (streams).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import mlx.core as mx

from ..runtime import usable_cores

logger = logging.getLogger(__name__)

# erf(y) ~ y P(y^2) / Q(y^2) on [-4, 4] (|erf| rounds to 1 in float32 beyond): our own least-squares
# rational fit, max error 4e-7 in float32 (MLX's own erf: 4.5e-7). Built from multiply/add/divide
# only, so a compiled kernel is several times faster on CPU than the primitive erf.
_ERF_P = (1.1283788451, 0.20002909523, 0.053973118522, 0.0041674864938, 0.00029204062283, 1.9498986028e-06)
_ERF_Q = (1.0, 0.51060108642, 0.11804471526, 0.01577179394, 0.0012566965953, 3.743163417e-05)
# GELU(x) = x (1/2 + erf(x / sqrt 2) / 2) = x (1/2 + c P'(c^2) / Q'(c^2)) with c = x clipped to
# +-4 sqrt 2 and the scalings folded into the coefficients.
_GELU_LIMIT = 4.0 * math.sqrt(2.0)
_GELU_P = tuple(p * 0.5**i * 0.5 / math.sqrt(2.0) for i, p in enumerate(_ERF_P))
_GELU_Q = tuple(q * 0.5**i for i, q in enumerate(_ERF_Q))


def _estrin5(z: mx.array, z2: mx.array, z4: mx.array, c: tuple[float, ...]) -> mx.array:
    # A degree-5 polynomial in z, evaluated as three independent pairs: a short dependency chain
    # keeps MLX's compiled CPU kernel in one piece (a long Horner chain is split into several
    # kernels with full-size intermediates between them).
    return (c[0] + c[1] * z) + z2 * (c[2] + c[3] * z) + z4 * (c[4] + c[5] * z)


def _gelu(x: mx.array) -> mx.array:
    # clip(x, -L, L) from two absolute values: MLX's compiled CPU kernels vectorise abs, but not
    # minimum/maximum/where (their NaN handling branches), which made the clip cost twice the rest.
    c = 0.5 * (mx.abs(x + _GELU_LIMIT) - mx.abs(x - _GELU_LIMIT))
    z = c * c
    z2 = z * z
    z4 = z2 * z2
    return x * (0.5 + c * _estrin5(z, z2, z4, _GELU_P) / _estrin5(z, z2, z4, _GELU_Q))


def _exp_nonpositive(x: mx.array) -> mx.array:
    # exp(x) for x <= 0 as 1 / (e^v)^16 with v = -x/16 >= 0, tracking e^v - 1 (Taylor, degree 7)
    # through the squarings so values near 1 keep full precision: absolute error < 2e-7, the scale
    # that matters for softmax weights (the Taylor error only shows where exp(x) < 1e-7). All terms
    # are positive, so a very negative x overflows the power to inf and gives exactly 0, with no
    # clamp: multiply/add and one divide only, which MLX's compiled CPU kernels run far faster
    # than its primitive exp (or a clamp).
    v = x * (-1.0 / 16.0)
    v2 = v * v
    v4 = v2 * v2
    q = v * ((1.0 + v * 0.5) + v2 * (1.0 / 6.0 + v * (1.0 / 24.0))
             + v4 * ((1.0 / 120.0 + v * (1.0 / 720.0)) + v2 * (1.0 / 5040.0)))
    for _ in range(4):
        q = q * (q + 2.0)
    return 1.0 / (q + 1.0)


_COMPILE_OK: list[bool] = []


def compile_available() -> bool:
    """Whether `mx.compile` works here (on Linux CPU it needs a C++ compiler at run time)."""
    if not _COMPILE_OK:
        try:
            mx.eval(mx.compile(lambda x: x * 2.0 + 1.0)(mx.zeros((4,))))
            _COMPILE_OK.append(True)
        except RuntimeError as exc:
            logger.warning("mx.compile is unavailable (%s): running uncompiled, which is slower "
                           "(on Linux install g++)", exc)
            _COMPILE_OK.append(False)
    return _COMPILE_OK[0]


class Fused:
    """`fn` compiled with `mx.compile` where that works, plain otherwise.

    A compiled function keeps the stream it was traced on, so each stream gets its own."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict[str, Any] = {}
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        if not compile_available():
            return self.fn(*args)
        stream = str(mx.default_stream(mx.default_device()))
        if stream not in self.compiled:
            fn = self.fn
            self.compiled[stream] = mx.compile(lambda *a: fn(*a))  # a distinct function per stream
        return self.compiled[stream](*args)


gelu = Fused(_gelu)
"""Exact-erf GELU (as torch's default `F.gelu`)."""
exp_nonpositive = Fused(_exp_nonpositive)
"""exp(x) for x <= 0, absolute error < 2e-7."""


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """Softmax attention over [B, H, T, D]; `mask` is boolean (True: may attend) or additive, and
    leaves every row at least one key. MLX's fused attention on a GPU, our kernels on the CPU."""
    if mx.default_device() == mx.gpu:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    # The row maximum is subtracted outside the compiled exp: a broadcast input would turn its
    # kernel into a slower strided one. Masked scores become -inf, whose exp is exactly 0.
    weights = exp_nonpositive(scores - mx.max(scores, axis=-1, keepdims=True))
    # Normalise after the value product: a pass over [T, D] instead of [T, T].
    return (weights @ v) / mx.sum(weights, axis=-1, keepdims=True)


MAX_LANES = 2
_LANES: dict[str, Any] = {"count": None, "extra": []}


def lane_count() -> int:
    """How many CPU streams (lanes) encoder work is split over: the usable cores, at most MAX_LANES
    (`set_lane_count` overrides it, e.g. 1 to keep an encoder on one core).

    MLX runs each CPU stream on its own thread but its element-wise kernels single-threaded, so with
    one stream only the matrix products can use a second core; independent pieces of the work on
    two streams keep both cores busy. Inside, OpenBLAS runs one thread per product (see
    `runtime.blas_threads`), so this does not depend on its thread setting: lanes that wait block
    instead of spinning, which keeps them cheap when another process holds a core."""
    if _LANES["count"] is not None:
        return _LANES["count"]
    return max(1, min(MAX_LANES, len(usable_cores())))


def set_lane_count(count: int | None) -> None:
    """Fix the number of CPU lanes (>= 1), or restore the automatic choice with None."""
    if count is not None and count < 1:
        raise ValueError(f"lane count must be at least 1, got {count}")
    _LANES["count"] = count


def lanes() -> list[mx.Stream]:
    """The streams to spread independent work over: the current stream first, then extra CPU streams;
    just the current stream off the CPU."""
    current = mx.default_stream(mx.default_device())
    if mx.default_device() != mx.cpu:
        return [current]
    count = lane_count()
    while len(_LANES["extra"]) < count - 1:
        _LANES["extra"].append(mx.new_stream(mx.cpu))
    return [current] + _LANES["extra"][: count - 1]


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) cut into `parts` contiguous, nearly equal, non-empty ranges (fewer when n < parts)."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))
