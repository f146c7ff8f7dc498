"""ONNX → qir converters for the elementwise family, for every opset version.

Older opset forms are upgraded here so that qir ops keep the newest ONNX semantics:

* ``consumed_inputs`` (opset < 6) is dropped: it only described buffer reuse.
* ``broadcast``/``axis`` on binary ops (opset < 7): with ``broadcast=1`` the second input's
  shape matches a run of the first's dims starting at ``axis``; it is reshaped with trailing
  1-dims so that numpy broadcasting gives the same result.
* Clip's ``min``/``max`` attributes (opset < 11) become constant inputs.
* Cast's ``to`` as a type name string (opset < 6) becomes a DType; ``saturate`` and
  ``round_mode`` get their defaults when the opset predates them.
"""

from __future__ import annotations

import numpy as np
import onnx

from qir.frontends.onnx.registry import converter
from qir.ir.types import TensorType

#: ONNX unary op type → qir op (same inputs; attributes dropped are legacy only).
UNARY = {
    "Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
    "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil", "Round": "round", "Sign": "sign",
    "Erf": "erf", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos",
    "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh",
    "Atanh": "atanh", "IsNaN": "is_nan", "Not": "not", "BitwiseNot": "bitwise_not",
}
#: ONNX binary op type → qir op; these took ``broadcast``/``axis`` before opset 7.
BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
    "And": "and", "Or": "or", "Xor": "xor", "Equal": "equal", "Less": "less", "Greater": "greater",
}
#: ONNX ops whose attributes map one to one (the newest ONNX names are qir's).
DIRECT = {
    "LessOrEqual": "less_or_equal", "GreaterOrEqual": "greater_or_equal",
    "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor",
    "BitShift": "bit_shift", "Mod": "mod", "IsInf": "is_inf", "Where": "where",
    "Max": "max", "Min": "min", "Sum": "sum", "Mean": "mean",
    "StringConcat": "string_concat", "RegexFullMatch": "regex_full_match",
    "StringNormalizer": "string_normalizer", "StringSplit": "string_split",
}
LEGACY_ATTRS = ("consumed_inputs",)


def _register_direct(op_type: str, qir_op: str) -> None:
    @converter(op_type, qir_op=qir_op)
    def convert(ctx):
        attrs = {k: v for k, v in ctx.attrs.items() if k not in LEGACY_ATTRS}
        return ctx.emit(qir_op, ctx.inputs, attrs)


for _onnx, _qir in {**UNARY, **DIRECT}.items():
    _register_direct(_onnx, f"elementwise.{_qir}")


def _align_legacy(ctx, a, b, axis: int | None):
    """``b`` reshaped so that numpy broadcasting aligns it with ``a`` at ``axis`` (opset < 7)."""
    rank_a = getattr(a.type, "rank", None)
    rank_b = getattr(b.type, "rank", None)
    if rank_a is None or rank_b is None:
        if axis is None:
            return b  # suffix alignment is numpy broadcasting already
        raise ctx.fail("legacy broadcast with an axis needs inputs of known rank")
    axis = rank_a - rank_b if axis is None else (axis + rank_a if axis < 0 else axis)
    trailing = rank_a - axis - rank_b
    if trailing <= 0:
        return b
    if b.const is not None:
        return ctx.const(b.const.reshape(b.const.shape + (1,) * trailing))
    # 0 copies the input dim, so this works with symbolic dims too.
    shape = ctx.const_ints([0] * rank_b + [1] * trailing)
    return ctx.emit("tensor.reshape", [b, shape], num_outputs=1)[0]


def _register_binary(op_type: str, qir_op: str) -> None:
    @converter(op_type, qir_op=qir_op)
    def convert(ctx):
        a, b = ctx.inputs[0], ctx.inputs[1]
        if ctx.opset < 7 and ctx.attrs.get("broadcast", 0):
            b = _align_legacy(ctx, a, b, ctx.attrs.get("axis"))
        return ctx.emit(qir_op, [a, b])


for _onnx, _qir in BINARY.items():
    _register_binary(_onnx, f"elementwise.{_qir}")


@converter("Clip", qir_op="elementwise.clip")
def clip(ctx):
    """Clip-1/6 bounds are attributes: they become constants of the input's dtype."""
    if ctx.opset >= 11:
        return ctx.emit("elementwise.clip", ctx.inputs)
    x = ctx.inputs[0]
    dtype = x.type.dtype.numpy if isinstance(x.type, TensorType) else np.float32
    bounds = [None if key not in ctx.attrs else ctx.const(np.asarray(ctx.attrs[key], dtype=dtype))
              for key in ("min", "max")]
    inputs = [x, *bounds]
    while inputs[-1] is None:
        inputs.pop()
    return ctx.emit("elementwise.clip", inputs)


def _cast_attrs(ctx, with_to: bool) -> dict:
    attrs = {"saturate": int(ctx.attrs.get("saturate", 1)),
             "round_mode": str(ctx.attrs.get("round_mode", "up"))}
    if with_to:
        to = ctx.attrs.get("to")
        if to is None:
            raise ctx.fail("Cast needs the 'to' attribute")
        if isinstance(to, str):  # Cast-1 names the type: "FLOAT", "INT64", ...
            try:
                to = onnx.TensorProto.DataType.Value(to.upper())
            except ValueError:
                raise ctx.fail(f"unknown type name {to!r} in 'to'") from None
        attrs["to"] = ctx.dtype(int(to))
    return attrs


@converter("Cast", qir_op="elementwise.cast")
def cast(ctx):
    return ctx.emit("elementwise.cast", ctx.inputs, _cast_attrs(ctx, with_to=True))


@converter("CastLike", qir_op="elementwise.cast_like")
def cast_like(ctx):
    return ctx.emit("elementwise.cast_like", ctx.inputs, _cast_attrs(ctx, with_to=False))


@converter("Shrink", qir_op="elementwise.shrink", since_version=9)
def shrink(ctx):
    """Shrink-9 is the only version; its attributes map one to one."""
    return ctx.emit("elementwise.shrink", ctx.inputs, dict(ctx.attrs))


@converter("BitCast", qir_op="elementwise.bit_cast", since_version=26)
def bit_cast(ctx):
    """BitCast-26: ``to`` is an ONNX type enum; it becomes a DType."""
    if "to" not in ctx.attrs:
        raise ctx.fail("BitCast needs the 'to' attribute")
    return ctx.emit("elementwise.bit_cast", ctx.inputs, {"to": ctx.dtype(int(ctx.attrs["to"]))})
