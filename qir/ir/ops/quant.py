"""Quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearConv,
QLinearMatMul and ConvInteger, with ONNX's newest semantics.

Convention (DESIGN.md): real = scale × (q − zero_point). Float → integer quantization rounds
half to even (``np.rint``), then saturates to the output type's range. Scales and zero points
are per tensor (scalar or one element), per axis (1-D along ``axis``) or blocked (same rank as
the input, ``block_size`` consecutive elements along ``axis`` sharing one entry).
"""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np

from qir.ir.opdef import Attr, InferContext, op
from qir.ir.ops.infer import broadcast_shapes, shaped
from qir.ir.types import DType, TensorType, Type

#: Integer quantized types and their (min, max) ranges.
_INT_RANGES: dict[DType, tuple[int, int]] = {
    d: (int(ml_dtypes.iinfo(d.numpy).min), int(ml_dtypes.iinfo(d.numpy).max))
    for d in (DType.UINT8, DType.INT8, DType.UINT16, DType.INT16, DType.UINT4, DType.INT4,
              DType.UINT2, DType.INT2, DType.INT32, DType.UINT32)
}
#: Float quantized types (no zero point; ``saturate`` clips overflow to the largest finite value).
_FLOAT_QTYPES = (DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ,
                 DType.FLOAT4E2M1, DType.FLOAT6E2M3, DType.FLOAT6E3M2)


def expand_param(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """A scale or zero point reshaped (per axis) or repeated (blocked) to broadcast against ``shape``."""
    param = np.asarray(param)
    if param.ndim == 0 or (param.size == 1 and not block_size):
        return param.reshape(())
    axis = axis % len(shape)
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = param.size
        return param.reshape(dims)
    # Blocked: each entry covers block_size consecutive elements along axis; the last may be short.
    return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def quantized_dtype(ctx: InferContext, zero_point_index: int) -> DType:
    """The output type of a quantize: output_dtype if set, else the zero point's, else uint8."""
    if ctx.attrs.get("output_dtype") is not None:
        return ctx.attrs["output_dtype"]
    if ctx.has(zero_point_index):
        return ctx.dtype(zero_point_index)
    return DType.UINT8


def saturate_to(values: np.ndarray, dtype: DType, saturate: bool = True) -> np.ndarray:
    """Round half to even (integer types) and clip ``values`` into ``dtype``'s range."""
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        return np.clip(np.rint(values), low, high).astype(dtype.numpy)
    if saturate:
        info = ml_dtypes.finfo(dtype.numpy)
        values = np.clip(values, float(info.min), float(info.max))  # NaN stays NaN
    return values.astype(dtype.numpy)


# -- QuantizeLinear / DequantizeLinear --------------------------------------------------------

def _infer_quantize(ctx: InferContext) -> list[Type]:
    return [TensorType(quantized_dtype(ctx, 2), ctx.shape(0))]


@op("quant.quantize_linear", inputs=["x", "y_scale", "y_zero_point?"], outputs=["y"],
    attrs={"axis": Attr("int", 1, "axis of per-axis / blocked quantization"),
           "saturate": Attr("int", 1, "float8 outputs: clip overflow to the largest finite value"),
           "block_size": Attr("int", 0, "block size of blocked quantization (0: none)"),
           "output_dtype": Attr("dtype", None, "output type (None: the zero point's, else uint8)"),
           "precision": Attr("dtype", None, "type of the division x / y_scale (None: y_scale's)")},
    infer=_infer_quantize)
def quantize_linear(x, y_scale, y_zero_point=None, *, axis, saturate, block_size, output_dtype,
                    precision):
    """y = saturate(round_half_even(x / y_scale) + y_zero_point)."""
    if output_dtype is None:
        output_dtype = DType.from_numpy(y_zero_point.dtype) if y_zero_point is not None else DType.UINT8
    scale = expand_param(y_scale, x.shape, axis, block_size)
    compute = precision.numpy if precision is not None else np.result_type(x.dtype, scale.dtype)
    scaled = x.astype(compute) / scale.astype(compute)
    if output_dtype in _INT_RANGES:
        scaled = np.rint(scaled).astype(np.float64)
        if y_zero_point is not None:
            scaled = scaled + expand_param(y_zero_point, x.shape, axis, block_size).astype(np.float64)
        return saturate_to(scaled, output_dtype)
    return saturate_to(scaled.astype(np.float32), output_dtype, bool(saturate))


def _infer_dequantize(ctx: InferContext) -> list[Type]:
    dtype = ctx.attrs["output_dtype"] or ctx.dtype(1)
    return [TensorType(dtype, ctx.shape(0))]


@op("quant.dequantize_linear", inputs=["x", "x_scale", "x_zero_point?"], outputs=["y"],
    attrs={"axis": Attr("int", 1, "axis of per-axis / blocked quantization"),
           "block_size": Attr("int", 0, "block size of blocked quantization (0: none)"),
           "output_dtype": Attr("dtype", None, "output type (None: x_scale's)")},
    infer=_infer_dequantize)
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis, block_size, output_dtype):
    """y = (x − x_zero_point) × x_scale, computed in float32; float-typed x has no zero point."""
    real = x.astype(np.float32)
    if x_zero_point is not None and DType.from_numpy(x.dtype) not in _FLOAT_QTYPES:
        real = real - expand_param(x_zero_point, x.shape, axis, block_size).astype(np.float32)
    y = real * expand_param(x_scale, x.shape, axis, block_size)
    return y.astype(output_dtype.numpy if output_dtype is not None else x_scale.dtype)


@op("quant.dynamic_quantize_linear", inputs=["x"], outputs=["y", "y_scale", "y_zero_point"],
    infer=lambda ctx: [TensorType(DType.UINT8, ctx.shape(0)), TensorType(ctx.dtype(0), ()),
                       TensorType(DType.UINT8, ())])
def dynamic_quantize_linear(x):
    """uint8 asymmetric quantization with a range from the data (always including 0)."""
    high = np.float32(max(0.0, float(np.max(x))))
    low = np.float32(min(0.0, float(np.min(x))))
    scale = np.float32(1.0 if high == low else high - low) / np.float32(255)
    zero_point = np.rint(np.clip(np.float32(0) - low / scale, 0, 255))
    y = np.clip(np.rint(x / scale) + zero_point, 0, 255)
    return y.astype(np.uint8), np.array(scale, dtype=x.dtype), np.array(zero_point).astype(np.uint8)


# -- QLinearMatMul ----------------------------------------------------------------------------

def matmul_shape(a, b):
    """Shape of numpy.matmul(a, b) for shapes with symbolic dims (None when unknown)."""
    if a is None or b is None:
        return None
    a1, b1 = len(a) == 1, len(b) == 1
    a2 = (1,) + tuple(a) if a1 else tuple(a)
    b2 = tuple(b) + (1,) if b1 else tuple(b)
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = tuple(batch) + (a2[-2], b2[-1])
    if a1:
        out = out[:-2] + out[-1:]
    if b1:
        out = out[:-1]
    return out


def _infer_qlinear_matmul(ctx: InferContext) -> list[Type]:
    dtype = ctx.dtype(7) if ctx.has(7) else ctx.dtype(0)
    return [TensorType(dtype, matmul_shape(ctx.shape(0), ctx.shape(3)))]


def _minus_zero_point(q: np.ndarray, zero_point) -> np.ndarray:
    q = q.astype(np.int32)
    return q if zero_point is None else q - np.asarray(zero_point).astype(np.int32)


def _rows(param):
    """A per-row (1-D, several entries) parameter of a, as a column that broadcasts over a's rows."""
    param = np.asarray(param)
    return param.reshape(-1, 1) if param.size > 1 else param


@op("quant.qlinear_matmul",
    inputs=["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"],
    outputs=["y"], infer=_infer_qlinear_matmul)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point=None):
    """Quantized matmul: integer products, rescaled by a_scale·b_scale/y_scale, requantized.

    Scales and zero points are per tensor, or per row of a / per column of b (1-D).
    """
    a_zp = None if a_zero_point is None else _rows(a_zero_point)
    acc = np.matmul(_minus_zero_point(a, a_zp), _minus_zero_point(b, b_zero_point))
    real = acc * (_rows(a_scale) * b_scale / y_scale)
    out = DType.from_numpy(a.dtype)
    if y_zero_point is not None:
        real = real + y_zero_point
        out = DType.from_numpy(y_zero_point.dtype)
    return saturate_to(real, out)


# -- ConvInteger / QLinearConv ----------------------------------------------------------------

_CONV_ATTRS = {
    "auto_pad": Attr("str", "NOTSET", "NOTSET (explicit pads), SAME_UPPER, SAME_LOWER or VALID"),
    "dilations": Attr("ints", (), "per spatial axis (empty: all 1)"),
    "group": Attr("int", 1),
    "kernel_shape": Attr("ints", (), "per spatial axis (empty: from the weight's shape)"),
    "pads": Attr("ints", (), "begins then ends per spatial axis (empty: all 0)"),
    "strides": Attr("ints", (), "per spatial axis (empty: all 1)"),
}


def conv_geometry(in_shape, kernel, auto_pad: str, pads, strides, dilations):
    """(pads, out_shape) of a convolution over spatial dims ``in_shape`` (ints)."""
    n = len(kernel)
    strides = list(strides) or [1] * n
    dilations = list(dilations) or [1] * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(i / s) for i, s in zip(in_shape, strides)]
        total = [max(0, (o - 1) * s + (k - 1) * d + 1 - i)
                 for o, s, k, d, i in zip(out, strides, kernel, dilations, in_shape)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = small + big if auto_pad == "SAME_UPPER" else big + small
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = list(pads) or [0] * (2 * n)
    out = [(i + pads[a] + pads[a + n] - d * (k - 1) - 1) // s + 1
           for a, (i, k, s, d) in enumerate(zip(in_shape, kernel, strides, dilations))]
    return pads, out, strides, dilations


def conv_nd(x: np.ndarray, w: np.ndarray, *, auto_pad, dilations, group, kernel_shape, pads,
            strides) -> np.ndarray:
    """N-d grouped convolution of integer arrays, accumulated in int64."""
    kernel = list(kernel_shape) or list(w.shape[2:])
    n = len(kernel)
    pads, out, strides, dilations = conv_geometry(x.shape[2:], kernel, auto_pad, pads, strides, dilations)
    xp = np.pad(x.astype(np.int64), [(0, 0), (0, 0)] + [(pads[a], pads[a + n]) for a in range(n)])
    batch, channels = x.shape[:2]
    cin = channels // group
    cout = w.shape[0] // group
    y = np.zeros((batch, w.shape[0], *out), dtype=np.int64)
    w = w.astype(np.int64)
    # One strided slice of the padded input per kernel tap: prod(kernel) small matmuls.
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                       for t, d, s, o in zip(tap, dilations, strides, out))
        patch = xp[(slice(None), slice(None)) + window]
        for g in range(group):
            wg = w[g * cout:(g + 1) * cout, :, *tap]
            y[:, g * cout:(g + 1) * cout] += np.einsum(
                "nc...,mc->nm...", patch[:, g * cin:(g + 1) * cin], wg)
    return y


def _conv_out_shape(ctx: InferContext, x: int, w: int):
    xs, ws = ctx.shape(x), ctx.shape(w)
    if xs is None or ws is None:
        return None
    kernel = list(ctx.attrs["kernel_shape"]) or list(ws[2:])
    spatial = xs[2:]
    if all(isinstance(d, int) for d in (*kernel, *spatial)):
        _, out, _, _ = conv_geometry(spatial, kernel, ctx.attrs["auto_pad"], ctx.attrs["pads"],
                                     ctx.attrs["strides"], ctx.attrs["dilations"])
    else:
        out = ["?"] * len(spatial)
    return (xs[0], ws[0], *out)


@op("quant.conv_integer", inputs=["x", "w", "x_zero_point?", "w_zero_point?"], outputs=["y"],
    attrs=dict(_CONV_ATTRS),
    infer=lambda ctx: [shaped(DType.INT32, _conv_out_shape(ctx, 0, 1))])
def conv_integer(x, w, x_zero_point=None, w_zero_point=None, **conv):
    """Integer convolution of (x − x_zero_point) and (w − w_zero_point) into int32."""
    xq = _minus_zero_point(x, x_zero_point)
    wq = w.astype(np.int32)
    if w_zero_point is not None:
        zp = np.asarray(w_zero_point).astype(np.int32)
        wq = wq - (zp.reshape((-1,) + (1,) * (w.ndim - 1)) if zp.size > 1 else zp.reshape(()))
    return conv_nd(xq, wq, **conv).astype(np.int32)


def _infer_qlinear_conv(ctx: InferContext) -> list[Type]:
    dtype = ctx.dtype(7) if ctx.has(7) else ctx.dtype(0)
    return [shaped(dtype, _conv_out_shape(ctx, 0, 3))]


@op("quant.qlinear_conv",
    inputs=["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point",
            "B?"],
    outputs=["y"], attrs=dict(_CONV_ATTRS), infer=_infer_qlinear_conv)
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point=None,
                 B=None, **conv):
    """Quantized convolution: int32 accumulation (+ int32 bias), rescaled and requantized.

    ``w_scale``/``w_zero_point`` are per tensor or per output channel.
    """
    acc = conv_integer(x, w, x_zero_point, w_zero_point, **conv)
    if B is not None:
        acc = acc + B.astype(np.int32).reshape((1, -1) + (1,) * (acc.ndim - 2))
    w_scale = np.asarray(w_scale)
    if w_scale.size > 1:
        w_scale = w_scale.reshape((1, -1) + (1,) * (acc.ndim - 2))
    real = acc * (x_scale * w_scale / y_scale)
    out = DType.from_numpy(x.dtype)
    if y_zero_point is not None:
        real = real + y_zero_point
        out = DType.from_numpy(y_zero_point.dtype)
    return saturate_to(real, out)


__all__ = ["expand_param", "saturate_to", "conv_nd", "conv_geometry", "matmul_shape"]
