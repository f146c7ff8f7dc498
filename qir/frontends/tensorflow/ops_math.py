"""TF → qir converters for elementwise math, comparisons, reductions, matmul, einsum and cast.

TF broadcasts like numpy (and ONNX), so binary ops map one to one. Ops ONNX lacks are written
with standard ops: Rsqrt = 1/sqrt, Square = x·x, SquaredDifference = (a-b)², Erfc = 1-erf.
"""

from __future__ import annotations

import numpy as np

from qir.frontends.tensorflow.registry import converter, simple
from qir.ir.types import DType

_BINARY = {
    "Add": "elementwise.add", "AddV2": "elementwise.add", "Sub": "elementwise.sub",
    "Mul": "elementwise.mul", "RealDiv": "elementwise.div", "Maximum": "elementwise.max",
    "Minimum": "elementwise.min", "Pow": "elementwise.pow", "Equal": "elementwise.equal",
    "Less": "elementwise.less", "LessEqual": "elementwise.less_or_equal",
    "Greater": "elementwise.greater", "GreaterEqual": "elementwise.greater_or_equal",
    "LogicalAnd": "elementwise.and", "LogicalOr": "elementwise.or",
}
_UNARY = {
    "Neg": "elementwise.neg", "Abs": "elementwise.abs", "Exp": "elementwise.exp",
    "Log": "elementwise.log", "Sqrt": "elementwise.sqrt", "Reciprocal": "elementwise.reciprocal",
    "Inv": "elementwise.reciprocal", "Floor": "elementwise.floor", "Ceil": "elementwise.ceil",
    "Round": "elementwise.round", "Sign": "elementwise.sign", "Sin": "elementwise.sin",
    "Cos": "elementwise.cos", "Erf": "elementwise.erf", "LogicalNot": "elementwise.not",
}
for _tf, _qir in {**_BINARY, **_UNARY}.items():
    simple(_tf, _qir)


@converter("Div")
def div(ctx):
    if not ctx.in_dtype(0).is_float:  # TF's integer Div floors; ONNX's truncates
        raise ctx.fail("on integers is not supported (only floating-point Div)")
    return ctx.emit("elementwise.div", ctx.inputs)


@converter("Rsqrt")
def rsqrt(ctx):
    return ctx.emit("elementwise.reciprocal", [ctx.emit("elementwise.sqrt", ctx.inputs)])


@converter("Square")
def square(ctx):
    x = ctx.inputs[0]
    return ctx.emit("elementwise.mul", [x, x])


@converter("SquaredDifference")
def squared_difference(ctx):
    d = ctx.emit("elementwise.sub", ctx.inputs[:2])
    return ctx.emit("elementwise.mul", [d, d])


@converter("Erfc")
def erfc(ctx):
    x = ctx.inputs[0]
    return ctx.emit("elementwise.sub", [ctx.scalar(1, x), ctx.emit("elementwise.erf", [x])])


@converter("Log1p")
def log1p(ctx):
    x = ctx.inputs[0]
    return ctx.emit("elementwise.log", [ctx.emit("elementwise.add", [x, ctx.scalar(1, x)])])


@converter("AddN")
def add_n(ctx):
    return ctx.emit("elementwise.sum", ctx.inputs)


@converter("Select", "SelectV2")
def select(ctx):
    cond, a, b = ctx.inputs[:3]
    ra, rc = len(ctx.in_shape(1) or ()), len(ctx.in_shape(0) or ())
    if ctx.type == "Select" and rc == 1 and ra > 1:
        # v1 Select picks whole rows with a vector condition: give it trailing unit dims
        cond = ctx.emit("tensor.reshape", [cond, ctx.ints([-1] + [1] * (ra - 1))], {"allowzero": 0})
    return ctx.emit("elementwise.where", [cond, a, b])


@converter("ClipByValue")
def clip_by_value(ctx):
    x, lo, hi = ctx.inputs[:3]
    return ctx.emit("elementwise.min", [ctx.emit("elementwise.max", [x, lo]), hi])


@converter("Cast")
def cast(ctx):
    return ctx.emit("elementwise.cast", ctx.inputs[:1], {"to": ctx.dtype_attr("DstT"), "saturate": 1,
                                                         "round_mode": "up"})


# -- reductions ----------------------------------------------------------------------------

_REDUCE = {"Mean": "reduce.mean", "Sum": "reduce.sum", "Max": "reduce.max", "Min": "reduce.min",
           "Prod": "reduce.prod"}


@converter(*_REDUCE)
def reduce(ctx):
    x, axes = ctx.inputs[:2]
    rank = len(ctx.in_shape(0)) if ctx.in_shape(0) is not None else None
    value = ctx.const(1)
    if value is not None and rank is not None:
        axes = ctx.ints(sorted({int(a) % rank for a in np.asarray(value).reshape(-1)}))
    else:
        axes = ctx.emit("tensor.reshape", [ctx.int64(axes), ctx.ints([-1])], {"allowzero": 0})
    # an empty axis list reduces nothing in TF
    return ctx.emit(_REDUCE[ctx.type], [x, axes], {"keepdims": int(bool(ctx.attr("keep_dims", False))),
                                                   "noop_with_empty_axes": 1})


@converter("ArgMax", "ArgMin")
def arg_max(ctx):
    rank = len(ctx.in_shape(0))
    axis = int(ctx.need_const(1, "dimension")) % rank
    op = "reduce.argmax" if ctx.type == "ArgMax" else "reduce.argmin"
    y = ctx.emit(op, ctx.inputs[:1], {"axis": axis, "keepdims": 0, "select_last_index": 0})
    if ctx.out_dtype() != DType.INT64:
        y = ctx.emit("elementwise.cast", [y], {"to": ctx.out_dtype(), "saturate": 1, "round_mode": "up"})
    return y


@converter("Cumsum")
def cumsum(ctx):
    return ctx.emit("reduce.cum_sum", [ctx.inputs[0], ctx.inputs[1]],
                    {"exclusive": int(ctx.attr("exclusive", False)), "reverse": int(ctx.attr("reverse", False))})


# -- matmul, einsum ------------------------------------------------------------------------

def _swap_last(ctx, x, rank: int):
    return ctx.transpose(x, [*range(rank - 2), rank - 1, rank - 2])


@converter("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
def matmul(ctx):
    a, b = ctx.inputs[:2]
    flags = ("transpose_a", "transpose_b") if ctx.type == "MatMul" else ("adj_x", "adj_y")
    if ctx.attr(flags[0], False):
        a = _swap_last(ctx, a, len(ctx.in_shape(0)))
    if ctx.attr(flags[1], False):
        b = _swap_last(ctx, b, len(ctx.in_shape(1)))
    y = ctx.emit("linalg.matmul", [a, b])
    if ctx.type == "BatchMatMulV3" and ctx.out_dtype() != y.type.dtype:
        y = ctx.emit("elementwise.cast", [y], {"to": ctx.out_dtype(), "saturate": 1, "round_mode": "up"})
    return y


@converter("Einsum")
def einsum(ctx):
    return ctx.emit("linalg.einsum", ctx.inputs, {"equation": ctx.attr("equation").replace(" ", "")})
