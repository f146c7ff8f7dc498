"""ONNX → qir converters for the quant family.

Every qir quant op has the newest ONNX semantics with its attributes explicit: the output type
of QuantizeLinear / DequantizeLinear is written out (ONNX derives it from the zero point or the
scale), axes are made non-negative, and convolution geometry (kernel shape, strides,
dilations, pads) is made explicit whenever the input shapes are known at import.
"""

from __future__ import annotations

from qir.frontends.onnx.registry import converter, simple
from qir.ir.ops.quant import conv_geometry
from qir.ir.types import DType, TensorType


def _rank(value) -> int | None:
    t = None if value is None else value.type
    return t.rank if isinstance(t, TensorType) else None


def _axis(ctx, value) -> int:
    axis = int(ctx.attrs.get("axis", 1))
    rank = _rank(value)
    if rank is not None and axis < 0:
        axis += rank
    return axis


def _dtype_attr(ctx, name: str) -> DType | None:
    code = int(ctx.attrs.get(name, 0) or 0)
    return ctx.dtype(code) if code else None


@converter("QuantizeLinear", qir_op="quant.quantize_linear", since_version=10)
def quantize_linear(ctx):
    x = ctx.inputs[0]
    zero_point = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    out = _dtype_attr(ctx, "output_dtype")
    if out is None:
        out = zero_point.type.dtype if zero_point is not None and zero_point.type is not None else DType.UINT8
    attrs = {"axis": _axis(ctx, x), "saturate": int(ctx.attrs.get("saturate", 1)),
             "block_size": int(ctx.attrs.get("block_size", 0)), "output_dtype": out,
             "precision": _dtype_attr(ctx, "precision")}
    return ctx.emit("quant.quantize_linear", ctx.inputs, attrs)


@converter("DequantizeLinear", qir_op="quant.dequantize_linear", since_version=10)
def dequantize_linear(ctx):
    x, scale = ctx.inputs[0], ctx.inputs[1]
    out = _dtype_attr(ctx, "output_dtype") or scale.type.dtype
    attrs = {"axis": _axis(ctx, x), "block_size": int(ctx.attrs.get("block_size", 0)),
             "output_dtype": out}
    return ctx.emit("quant.dequantize_linear", ctx.inputs, attrs)


simple("DynamicQuantizeLinear", "quant.dynamic_quantize_linear", since_version=11)
simple("QLinearMatMul", "quant.qlinear_matmul", since_version=10)


def _conv_attrs(ctx, x, w) -> dict:
    """Explicit convolution geometry; auto_pad is resolved when the spatial shape is static."""
    a = ctx.attrs
    w_shape = None if w is None or not isinstance(w.type, TensorType) else w.type.shape
    kernel = list(a.get("kernel_shape", ())) or (list(w_shape[2:]) if w_shape is not None else [])
    n = len(kernel)
    attrs = {"auto_pad": a.get("auto_pad", "NOTSET") or "NOTSET", "group": int(a.get("group", 1)),
             "kernel_shape": tuple(kernel),
             "strides": tuple(a.get("strides", ())) or (1,) * n,
             "dilations": tuple(a.get("dilations", ())) or (1,) * n,
             "pads": tuple(a.get("pads", ())) or (0,) * (2 * n)}
    if not kernel or not all(isinstance(k, int) for k in kernel):
        attrs["kernel_shape"] = ()  # decided at run time from the weight
        return attrs
    x_shape = x.type.shape if isinstance(x.type, TensorType) else None
    if attrs["auto_pad"] != "NOTSET" and x_shape is not None and all(isinstance(d, int) for d in x_shape[2:]):
        pads, _, _, _ = conv_geometry(x_shape[2:], kernel, attrs["auto_pad"], attrs["pads"],
                                      attrs["strides"], attrs["dilations"])
        attrs.update(auto_pad="NOTSET", pads=tuple(pads))
    return attrs


@converter("ConvInteger", qir_op="quant.conv_integer", since_version=10)
def conv_integer(ctx):
    return ctx.emit("quant.conv_integer", ctx.inputs, _conv_attrs(ctx, ctx.inputs[0], ctx.inputs[1]))


@converter("QLinearConv", qir_op="quant.qlinear_conv", since_version=10)
def qlinear_conv(ctx):
    return ctx.emit("quant.qlinear_conv", ctx.inputs, _conv_attrs(ctx, ctx.inputs[0], ctx.inputs[3]))
