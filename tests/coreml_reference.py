"""A numpy interpreter for the MIL programs this package exports, to check them where Core ML cannot run.

coremltools on Linux converts and saves models but cannot run them: `MLModel.predict` needs Apple's
Core ML framework (the Linux wheel ships no `libcoremlpython`), and MIL has no interpreter of its own.
`run_program` walks the program read back from a saved package, op by op, with each op's documented
semantics (coremltools' MIL op reference). It covers exactly the ops our encoders use and refuses any
other, so a package whose graph drifts from the MLX encoders shows up on any machine.

precision "float32" computes every op in float32 (fp16 constants widened exactly, casts to fp16
ignored): it isolates the graph's maths and wiring from rounding. "float16" also rounds each fp16
result to float16 (each op still computes in float32), a rough stand-in for the Neural Engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dora_primespeech_mlx.errors import PrimeSpeechError

_DTYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "bool": np.bool_}


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[np.float64])(x)


def _gelu(x: np.ndarray, mode: str = "EXACT") -> np.ndarray:
    x64 = x.astype(np.float64)
    if mode == "EXACT":
        try:
            from scipy.special import erf
        except ImportError:
            erf = _erf
        y = 0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))
    elif mode == "TANH_APPROXIMATION":
        y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))
    elif mode == "SIGMOID_APPROXIMATION":
        y = x64 / (1.0 + np.exp(-1.702 * x64))
    else:
        raise PrimeSpeechError(f"unknown gelu mode {mode!r} in the Core ML program")
    return y.astype(x.dtype)


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, strides=None,
          pad_type: str = "valid", pad=None, dilations=None, groups: int = 1) -> np.ndarray:
    """1-D convolution: x [N, Cin, L], weight [Cout, Cin/groups, K] -> [N, Cout, Lout]."""
    if x.ndim != 3:
        raise PrimeSpeechError("the reference interpreter only supports 1-D conv")
    stride = int(strides[0]) if strides is not None else 1
    dilation = int(dilations[0]) if dilations is not None else 1
    if dilation != 1:
        raise PrimeSpeechError("the reference interpreter does not support dilated conv")
    k = weight.shape[-1]
    if pad_type == "valid":
        before = after = 0
    elif pad_type == "custom":
        before, after = int(pad[0]), int(pad[1])
    elif pad_type in ("same", "same_lower"):
        length = x.shape[-1]
        total = max((math.ceil(length / stride) - 1) * stride + k - length, 0)
        small, large = total // 2, total - total // 2
        before, after = (small, large) if pad_type == "same" else (large, small)
    else:
        raise PrimeSpeechError(f"unknown conv pad_type {pad_type!r}")
    if before or after:
        x = np.pad(x, ((0, 0), (0, 0), (before, after)))
    n, c_in, length = x.shape
    c_out = weight.shape[0]
    l_out = (length - k) // stride + 1
    # windows: [N, Cin, Lout, K], a strided view without copying the input
    windows = np.lib.stride_tricks.sliding_window_view(x, k, axis=2)[:, :, ::stride][:, :, :l_out]
    cg_in, cg_out = c_in // groups, c_out // groups
    out = np.empty((n, c_out, l_out), dtype=np.result_type(x.dtype, weight.dtype))
    for g in range(groups):
        w = weight[g * cg_out:(g + 1) * cg_out]  # [cg_out, cg_in, K]
        win = windows[:, g * cg_in:(g + 1) * cg_in]  # [N, cg_in, Lout, K]
        out[:, g * cg_out:(g + 1) * cg_out] = np.einsum("nclk,ock->nol", win, w, optimize=True)
    if bias is not None:
        out += bias[None, :, None]
    return out


def _layer_norm(x, axes, gamma=None, beta=None, epsilon=1e-5):
    axes = tuple(int(a) for a in np.atleast_1d(axes))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.asarray(epsilon, dtype=x.dtype))
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.asarray(epsilon, dtype=x.dtype))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def _softmax(x, axis=-1):
    z = x - x.max(axis=int(axis), keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=int(axis), keepdims=True)


def _reshape(x, shape):
    shape = [int(s) for s in shape]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    index = []
    squeeze_axes = []
    for i in range(x.ndim):
        b = None if begin_mask is not None and begin_mask[i] else int(begin[i])
        e = None if end_mask is not None and end_mask[i] else int(end[i])
        s = int(stride[i]) if stride is not None else 1
        if squeeze_mask is not None and squeeze_mask[i]:
            index.append(slice(int(begin[i]), None if int(begin[i]) == -1 else int(begin[i]) + 1))
            squeeze_axes.append(i)
        else:
            index.append(slice(b, e, s))
    y = x[tuple(index)]
    return np.squeeze(y, axis=tuple(squeeze_axes)) if squeeze_axes else y


def _gather(x, indices, axis=0, batch_dims=0):
    if int(batch_dims) != 0:
        raise PrimeSpeechError("the reference interpreter does not support batched gather")
    return np.take(x, np.asarray(indices).astype(np.int64), axis=int(axis))


def _linear(x, weight, bias=None):
    y = np.dot(x.reshape(-1, x.shape[-1]), weight.T).reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def _cast(x, dtype):
    return np.asarray(x).astype(_DTYPES[str(dtype)])


_OPS: dict[str, Callable[..., Any]] = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "real_div": lambda x, y: x / y,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": lambda x, y: np.equal(x, y),
    "not_equal": lambda x, y: np.not_equal(x, y),
    "select": lambda cond, a, b: np.where(cond, a, b),
    "sqrt": np.sqrt,
    "rsqrt": lambda x, epsilon=1e-12: 1.0 / np.sqrt(x + np.asarray(epsilon, dtype=x.dtype)),
    "cast": _cast,
    "identity": lambda x: x,
    "linear": _linear,
    "matmul": lambda x, y, transpose_x=False, transpose_y=False: np.matmul(
        np.swapaxes(x, -1, -2) if transpose_x else x, np.swapaxes(y, -1, -2) if transpose_y else y),
    "conv": _conv,
    "layer_norm": _layer_norm,
    "instance_norm": _instance_norm,
    "gelu": _gelu,
    "softmax": _softmax,
    "reshape": _reshape,
    "transpose": lambda x, perm: np.transpose(x, [int(p) for p in perm]),
    "expand_dims": lambda x, axes: np.expand_dims(x, tuple(int(a) for a in axes)),
    "squeeze": lambda x, axes=None: np.squeeze(x, None if axes is None else tuple(int(a) for a in axes)),
    "slice_by_index": _slice_by_index,
    "gather": _gather,
    "shape": lambda x: np.array(np.shape(x), dtype=np.int32),
    "range_1d": lambda start, end, step: np.arange(int(start), int(end), int(step), dtype=np.int32),
    "reduce_mean": lambda x, axes=None, keep_dims=False: x.mean(
        axis=None if axes is None else tuple(int(a) for a in axes), keepdims=bool(keep_dims)),
}

SUPPORTED_OPS = frozenset(_OPS) | {"const"}


def _mil_dtype_name(var) -> str | None:
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    if dtype == types.fp16:
        return "fp16"
    if dtype == types.fp32:
        return "fp32"
    return None


def run_program(program, inputs: Mapping[str, np.ndarray], *, precision: str = "float32",
                function: str = "main") -> dict[str, np.ndarray]:
    """Evaluate a MIL program (e.g. from `readback.read_program`) on numpy inputs; returns its outputs."""
    if precision not in ("float32", "float16"):
        raise PrimeSpeechError(f"unknown precision {precision!r}: use float32 or float16")
    func = program.functions[function]
    env: dict[str, np.ndarray] = {}
    for name, var in func.inputs.items():
        if name not in inputs:
            raise PrimeSpeechError(f"the program needs input {name!r}")
        env[var.name] = np.asarray(inputs[name])
    widened: dict[str, np.ndarray] = {}

    def value(var) -> Any:
        if var.name in env:
            return env[var.name]
        val = var.val
        if isinstance(val, (np.ndarray, np.generic)) and val.dtype == np.float16:
            if var.name not in widened:
                widened[var.name] = val.astype(np.float32)
            return widened[var.name]
        return val

    for op in func.operations:
        if op.op_type == "const":
            continue
        fn = _OPS.get(op.op_type)
        if fn is None:
            raise PrimeSpeechError(f"the reference interpreter has no op {op.op_type!r} ({op.name})")
        kwargs = {}
        for key, var in op.inputs.items():
            kwargs[key] = [value(v) for v in var] if isinstance(var, (list, tuple)) else value(var)
        if op.op_type == "cast" and kwargs["dtype"] == "fp16":
            kwargs["dtype"] = "fp32"  # rounding to fp16 (float16 precision) happens below, per output
        result = fn(**kwargs)
        outs = result if isinstance(result, tuple) else (result,)
        for var, out in zip(op.outputs, outs, strict=True):
            out = np.asarray(out)
            if out.dtype.kind == "f":
                want = _mil_dtype_name(var)
                out = out.astype(np.float32)
                if precision == "float16" and want == "fp16":
                    out = out.astype(np.float16).astype(np.float32)
            env[var.name] = out
    return {var.name: env[var.name] for var in func.outputs}
