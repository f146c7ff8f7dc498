"""The qint family: integer-only quantized compute, the ops a quantized graph runs.

Every op takes integer tensors (u8/i8/u16/i16 activations, i8 weights, i32 bias), accumulates
exactly, and requantizes with qir.ir.fixedpoint (multiplier + shift, round half up), then adds
the output zero point and clamps to ``[y_min, y_max]`` (a fused ReLU/clip, else the type's
range). The node alone fixes the integer result: zero points, multipliers and shifts are
attributes or constant inputs, never recomputed from float scales by a target. Scales live on
the tensors' types (``TensorType.quant``) for people, encodings files and exporters.

- ``qint.conv(x, w, multiplier, shift, b?, w_zero_point?)``: acc = Σ (x − zx)(w − zw) + b,
  per output channel multiplier/shift (or one for all).
- ``qint.matmul(a, b, multiplier, shift, bias?, b_zero_point?)``: acc = (a − za)·(b − zb) + bias,
  per column of b (last axis) or one for all.
- ``qint.add(a, b)``: both inputs rescaled to a common scale (shifted left by ``left_shift`` for
  headroom), summed, requantized (TFLite's scheme).
- ``qint.mul(a, b)``: acc = (a − za)(b − zb).
- ``qint.requantize(x)``: acc = (x − zx)·2^left_shift (another scale / zero point / type, or a
  clamp).
- ``qint.average_pool(x)`` / ``qint.mean(x)``: window / axis sums, shifted left by
  ``left_shift``; the factor per distinct element count c is
  ``quantize_multiplier(scale_ratio / (c · 2^left_shift))``.

``left_shift`` gives small factors headroom: the requantization rounds twice (fixed-point
multiply, then shift), and with few shift bits the two roundings can compound to 1 LSB off;
shifting the accumulator left first makes that rare (``qint.add``'s inputs get the same).
- ``qint.lookup(x, table)``: y = table[x − min(x's type)]: any 8/16-bit unary function.

Integer sums are computed in float64 where BLAS helps: every partial sum of products of 16-bit
by 8-bit integers over fewer than 2^29 terms stays below 2^53, so the result is exact.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from qir.ir.fixedpoint import channel_params, quantize_multiplier, requantize
from qir.ir.opdef import Attr, InferContext, get_op, op
from qir.ir.ops.infer import broadcast_shapes
from qir.ir.ops.nn import Geometry, window_count
from qir.ir.types import DType, TensorType, Type

_OUT_ATTRS = {
    "y_zero_point": Attr("int", 0, "output zero point"),
    "y_min": Attr("int", None, "clamp low (fused ReLU/clip); None: the output type's minimum"),
    "y_max": Attr("int", None, "clamp high; None: the output type's maximum"),
    "output_dtype": Attr("dtype", DType.UINT8, "output integer type"),
}


def type_range(dtype: DType) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype.numpy)
    return int(info.min), int(info.max)


def _finish(acc, multiplier, shift, *, y_zero_point, y_min, y_max, output_dtype, axis=1):
    lo, hi = type_range(output_dtype)
    lo = lo if y_min is None else max(lo, y_min)
    hi = hi if y_max is None else min(hi, y_max)
    m = channel_params(multiplier, acc.ndim, axis)
    s = channel_params(shift, acc.ndim, axis)
    return requantize(acc, m, s, y_zero_point, lo, hi).astype(output_dtype.numpy)


def _centered(x, zero_point) -> np.ndarray:
    return x.astype(np.float64) - np.asarray(zero_point, dtype=np.float64)


def _exact(acc: np.ndarray) -> np.ndarray:
    return np.rint(acc).astype(np.int64)


def _out(ctx: InferContext, shape) -> list[Type]:
    return [TensorType(ctx.attrs["output_dtype"], shape)]


def _check_int_inputs(*indices):
    def verify(ctx: InferContext) -> None:
        for i in indices:
            if ctx.has(i) and not ctx.dtype(i).is_int:
                raise ctx.fail(f"input {i} must be an integer tensor, got {ctx.dtype(i).value}")
        if not ctx.attrs["output_dtype"].is_int:
            raise ctx.fail("output_dtype must be an integer type")
    return verify


def _check_channels(ctx: InferContext, count, what: str) -> None:
    for i, name in ((2, "multiplier"), (3, "shift")):
        c = ctx.const(i)
        if c is not None and c.size not in (1, count) and isinstance(count, int):
            raise ctx.fail(f"{name} has {c.size} entries for {count} {what}")


# -- conv -----------------------------------------------------------------------------------

_CONV_ATTRS = {k: v for k, v in get_op("nn.conv").attrs.items()}


def _conv_verify(ctx: InferContext) -> None:
    _check_int_inputs(0, 1, 4, 5)(ctx)
    ws = ctx.shape(1)
    if ws is not None:
        _check_channels(ctx, ws[0], "output channels")


@op("qint.conv", inputs=["x", "w", "multiplier", "shift", "b?", "w_zero_point?"], outputs=["y"],
    attrs={**_CONV_ATTRS, "x_zero_point": Attr("int", 0), **_OUT_ATTRS},
    infer=lambda ctx: _out(ctx, get_op("nn.conv").infer(ctx)[0].shape), verify=_conv_verify)
def conv(x, w, multiplier, shift, b=None, w_zero_point=None, *, x_zero_point, y_zero_point, y_min,
         y_max, output_dtype, **conv_attrs):
    """Integer convolution; padding is real zero (the input zero point)."""
    wz = 0 if w_zero_point is None else channel_params(w_zero_point, w.ndim, 0)
    acc = get_op("nn.conv").kernel(_centered(x, x_zero_point), _centered(w, wz), **conv_attrs)
    acc = _exact(acc)
    if b is not None:
        acc = acc + channel_params(b.astype(np.int64), acc.ndim, 1)
    return _finish(acc, multiplier, shift, y_zero_point=y_zero_point, y_min=y_min, y_max=y_max,
                   output_dtype=output_dtype)


# -- matmul ---------------------------------------------------------------------------------

def _matmul_infer(ctx: InferContext):
    return _out(ctx, get_op("linalg.matmul").infer(ctx)[0].shape)


def _matmul_verify(ctx: InferContext) -> None:
    _check_int_inputs(0, 1, 4, 5)(ctx)
    bs = ctx.shape(1)
    if bs is not None:
        _check_channels(ctx, bs[-1], "columns of b")


@op("qint.matmul", inputs=["a", "b", "multiplier", "shift", "bias?", "b_zero_point?"],
    outputs=["y"], attrs={"a_zero_point": Attr("int", 0), **_OUT_ATTRS},
    infer=_matmul_infer, verify=_matmul_verify)
def matmul(a, b, multiplier, shift, bias=None, b_zero_point=None, *, a_zero_point, y_zero_point,
           y_min, y_max, output_dtype):
    """Integer matmul (numpy broadcasting of batch dims), per-column requantization."""
    bz = 0 if b_zero_point is None else np.asarray(b_zero_point, dtype=np.float64).reshape(-1)
    acc = _exact(np.matmul(_centered(a, a_zero_point), _centered(b, bz)))
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    return _finish(acc, multiplier, shift, y_zero_point=y_zero_point, y_min=y_min, y_max=y_max,
                   output_dtype=output_dtype, axis=acc.ndim - 1)


# -- elementwise ----------------------------------------------------------------------------

def _binary_infer(ctx: InferContext):
    a, b = ctx.shape(0), ctx.shape(1)
    return _out(ctx, None if a is None or b is None else broadcast_shapes(a, b))


_SCALAR_REQUANT = {"multiplier": Attr("int", 1 << 30), "shift": Attr("int", -1)}


@op("qint.add", inputs=["a", "b"], outputs=["y"],
    attrs={"a_zero_point": Attr("int", 0), "b_zero_point": Attr("int", 0),
           "a_multiplier": Attr("int", 1 << 30), "a_shift": Attr("int", -1),
           "b_multiplier": Attr("int", 1 << 30), "b_shift": Attr("int", -1),
           "left_shift": Attr("int", 20, "headroom bits before rescaling the inputs"),
           **_SCALAR_REQUANT, **_OUT_ATTRS},
    infer=_binary_infer, verify=_check_int_inputs(0, 1))
def add(a, b, *, a_zero_point, b_zero_point, a_multiplier, a_shift, b_multiplier, b_shift,
        left_shift, multiplier, shift, y_zero_point, y_min, y_max, output_dtype):
    """y = requant(requant((a − za)·2^L, Ma) + requant((b − zb)·2^L, Mb), M) + zy."""
    from qir.ir.fixedpoint import multiply_by_quantized_multiplier as mbqm

    sa = mbqm((a.astype(np.int64) - a_zero_point) << left_shift, a_multiplier, a_shift)
    sb = mbqm((b.astype(np.int64) - b_zero_point) << left_shift, b_multiplier, b_shift)
    return _finish(sa + sb, multiplier, shift, y_zero_point=y_zero_point, y_min=y_min,
                   y_max=y_max, output_dtype=output_dtype)


@op("qint.mul", inputs=["a", "b"], outputs=["y"],
    attrs={"a_zero_point": Attr("int", 0), "b_zero_point": Attr("int", 0), **_SCALAR_REQUANT,
           **_OUT_ATTRS},
    infer=_binary_infer, verify=_check_int_inputs(0, 1))
def mul(a, b, *, a_zero_point, b_zero_point, multiplier, shift, y_zero_point, y_min, y_max,
        output_dtype):
    """y = requant((a − za)(b − zb), M) + zy."""
    acc = (a.astype(np.int64) - a_zero_point) * (b.astype(np.int64) - b_zero_point)
    return _finish(acc, multiplier, shift, y_zero_point=y_zero_point, y_min=y_min, y_max=y_max,
                   output_dtype=output_dtype)


_LEFT_SHIFT = {"left_shift": Attr("int", 0, "headroom bits the accumulator is shifted left by "
                                            "before requantizing (the factor includes 2^-left_shift)")}


@op("qint.requantize", inputs=["x"], outputs=["y"],
    attrs={"x_zero_point": Attr("int", 0), **_LEFT_SHIFT, **_SCALAR_REQUANT, **_OUT_ATTRS},
    infer=lambda ctx: _out(ctx, ctx.shape(0)), verify=_check_int_inputs(0))
def requantize_op(x, *, x_zero_point, left_shift, multiplier, shift, y_zero_point, y_min, y_max,
                  output_dtype):
    """y = requant((x − zx)·2^L, M) + zy, clamped: a change of scale, zero point, type or range."""
    return _finish((x.astype(np.int64) - x_zero_point) << left_shift, multiplier, shift,
                   y_zero_point=y_zero_point, y_min=y_min, y_max=y_max, output_dtype=output_dtype)


# -- averages -------------------------------------------------------------------------------

def _average(sums: np.ndarray, counts: np.ndarray, scale_ratio: float, left_shift: int,
             **out) -> np.ndarray:
    """Each sum·2^L requantized by scale_ratio / (count·2^L), one multiplier per distinct count."""
    sums = _exact(sums) << left_shift
    counts = np.broadcast_to(np.rint(counts).astype(np.int64), sums.shape)
    y = np.empty(sums.shape, dtype=out["output_dtype"].numpy)
    for count in np.unique(counts):
        m, s = quantize_multiplier(scale_ratio / (max(int(count), 1) * 2.0 ** left_shift))
        where = counts == count
        y[where] = _finish(sums[where], m, s, axis=0, **out)
    return y


_POOL = get_op("nn.average_pool")
_AVG_ATTRS = {"x_zero_point": Attr("int", 0),
              "scale_ratio": Attr("float", 1.0, "input scale / output scale"), **_LEFT_SHIFT,
              **_OUT_ATTRS}


@op("qint.average_pool", inputs=["x"], outputs=["y"], attrs={**_POOL.attrs, **_AVG_ATTRS},
    infer=lambda ctx: _out(ctx, _POOL.infer(ctx)[0].shape), verify=_check_int_inputs(0))
def average_pool(x, *, x_zero_point, scale_ratio, left_shift, y_zero_point, y_min, y_max, output_dtype,
                 auto_pad, ceil_mode, count_include_pad, dilations, kernel_shape, pads, strides):
    """Window sums of (x − zx) (padding is real zero), requantized by scale_ratio / count, with
    the counts of nn.average_pool (count_include_pad, ceil mode)."""
    n = x.ndim - 2
    geo = Geometry(x.shape[2:], kernel_shape, strides, dilations, pads, auto_pad, bool(ceil_mode))
    win = geo.windows(geo.pad(_centered(x, x_zero_point), 0))
    sums = win.reshape(win.shape[:2 + n] + (geo.taps,)).sum(axis=-1)
    counts = window_count(geo, bool(count_include_pad), np.float64)
    return _average(sums, counts, scale_ratio, left_shift, y_zero_point=y_zero_point, y_min=y_min,
                    y_max=y_max, output_dtype=output_dtype)


def _mean_infer(ctx: InferContext):
    return _out(ctx, get_op("reduce.mean").infer(ctx)[0].shape)


@op("qint.mean", inputs=["x", "axes?"], outputs=["y"],
    attrs={"keepdims": Attr("int", 1), "noop_with_empty_axes": Attr("int", 0), **_AVG_ATTRS},
    infer=_mean_infer, verify=_check_int_inputs(0))
def mean(x, axes=None, *, keepdims, noop_with_empty_axes, x_zero_point, scale_ratio, left_shift,
         y_zero_point, y_min, y_max, output_dtype):
    """Sum of (x − zx) over ``axes`` (all when absent), requantized by scale_ratio / count."""
    axes = tuple(range(x.ndim)) if axes is None or np.size(axes) == 0 else \
        tuple(int(a) % x.ndim for a in np.atleast_1d(axes))
    sums = _centered(x, x_zero_point).sum(axis=axes, keepdims=bool(keepdims))
    count = int(np.prod([x.shape[a] for a in axes]))
    return _average(sums, np.full(sums.shape, count), scale_ratio, left_shift,
                    y_zero_point=y_zero_point, y_min=y_min, y_max=y_max, output_dtype=output_dtype)


# -- lookup ---------------------------------------------------------------------------------

def _lookup_verify(ctx: InferContext) -> None:
    if not ctx.dtype(0).is_int or ctx.dtype(0).numpy.itemsize > 2:
        raise ctx.fail("lookup input must be an 8- or 16-bit integer tensor")
    shape = ctx.shape(1)
    want = 1 << (8 * ctx.dtype(0).numpy.itemsize)
    if shape is not None and tuple(shape) != (want,):
        raise ctx.fail(f"table must have {want} entries for {ctx.dtype(0).value} input, got {shape}")


@op("qint.lookup", inputs=["x", "table"], outputs=["y"],
    infer=lambda ctx: [TensorType(ctx.dtype(1), ctx.shape(0))], verify=_lookup_verify)
def lookup(x, table):
    """y = table[x − min(x's type)]: a unary function of an 8/16-bit tensor, tabulated."""
    low, _ = type_range(DType.from_numpy(x.dtype))
    return table[x.astype(np.int64) - low]
