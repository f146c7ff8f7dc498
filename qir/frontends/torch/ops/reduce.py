"""Reductions: sum, mean, amax/amin, max/min along a dim, prod, var/std, argmax/argmin,
any/all, logsumexp, vector norms, cumsum."""

from __future__ import annotations

import numpy as np

from qir.frontends.torch.registry import aten
from qir.ir.types import DType


def _axes(ctx, dims) -> list[int]:
    rank = ctx.rank(ctx.args["self"])
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return list(range(rank))  # torch: no dims (or []) reduces every dim
    dims = [dims] if isinstance(dims, int) else dims
    return sorted({ctx.axis(int(d), rank) for d in dims})


def _reduce(ctx, qir_op: str, dims, keepdim, x=None):
    if x is None:
        x = ctx.value(ctx.args["self"], ctx.out_dtype)
    axes = _axes(ctx, dims)
    if not axes:  # a 0-d tensor
        return x
    return ctx.emit(qir_op, [x, ctx.ints(axes)], {"keepdims": int(bool(keepdim))})


def _reduction(qir_op: str):
    def convert(ctx):
        return _reduce(ctx, qir_op, ctx.args.get("dim"), ctx.args.get("keepdim", False))
    return convert


for _name, _op in (("sum", "reduce.sum"), ("mean", "reduce.mean"), ("amax", "reduce.max"),
                   ("amin", "reduce.min"), ("prod", "reduce.prod"), ("logsumexp", "reduce.log_sum_exp")):
    aten(_name)(_reduction(_op))


def _extreme(value_op: str, index_op: str):
    """max/min: over everything (one output), or along a dim (values and indices)."""
    def convert(ctx):
        dim = ctx.args.get("dim")
        if dim is None:
            return _reduce(ctx, value_op, None, False)
        keep = bool(ctx.args.get("keepdim", False))
        values = _reduce(ctx, value_op, dim, keep)
        axis = _axes(ctx, dim)[0]
        indices = ctx.emit(index_op, [ctx.value(ctx.args["self"])], {"axis": axis, "keepdims": int(keep)})
        return [values, indices]
    return convert


aten("max")(_extreme("reduce.max", "reduce.argmax"))
aten("min")(_extreme("reduce.min", "reduce.argmin"))


def _arg(qir_op: str):
    def convert(ctx):
        x = ctx.value(ctx.args["self"])
        dim, keep = ctx.args.get("dim"), int(bool(ctx.args.get("keepdim", False)))
        if dim is None:  # over the flattened tensor
            x = ctx.emit("tensor.reshape", [x, ctx.ints([-1])])
            return ctx.emit(qir_op, [x], {"axis": 0, "keepdims": 0})
        return ctx.emit(qir_op, [x], {"axis": _axes(ctx, dim)[0], "keepdims": keep})
    return convert


aten("argmax")(_arg("reduce.argmax"))
aten("argmin")(_arg("reduce.argmin"))


def _any_all(qir_op: str):
    def convert(ctx):
        x = ctx.value(ctx.args["self"], DType.INT32)  # any = max of 0/1, all = min of 0/1
        y = _reduce(ctx, qir_op, ctx.args.get("dim"), ctx.args.get("keepdim", False), x=x)
        return ctx.emit("elementwise.cast", [y], {"to": DType.BOOL})
    return convert


aten("any")(_any_all("reduce.max"))
aten("all")(_any_all("reduce.min"))


def _variance(ctx):
    """Σ(x − mean)² / (n − correction) over the dims."""
    a = ctx.args
    dt = ctx.out_dtype
    x = ctx.value(a["self"], dt)
    axes = _axes(ctx, a.get("dim"))
    shape = ctx.meta_shape(a["self"])
    if not all(isinstance(shape[i], int) for i in axes):
        raise ctx.fail("variance over dynamic dims is not supported")
    n = int(np.prod([shape[i] for i in axes]))
    correction = a.get("correction")
    correction = 1 if correction is None else float(correction)
    mean = ctx.emit("reduce.mean", [x, ctx.ints(axes)], {"keepdims": 1})
    diff = ctx.emit("elementwise.sub", [x, mean])
    sq = ctx.emit("reduce.sum", [ctx.emit("elementwise.mul", [diff, diff]), ctx.ints(axes)],
                  {"keepdims": int(bool(a.get("keepdim", False)))})
    return ctx.emit("elementwise.div", [sq, ctx.value(max(n - correction, 0.0))])


@aten("var")
def var(ctx):
    return _variance(ctx)


@aten("std")
def std(ctx):
    return ctx.emit("elementwise.sqrt", [_variance(ctx)])


@aten("linalg_vector_norm")
def vector_norm(ctx):
    order = float(ctx.args.get("ord", 2))
    ops = {1.0: "reduce.l1", 2.0: "reduce.l2"}
    if order not in ops:
        raise ctx.fail(f"vector norm of order {order} is not supported (1 or 2)")
    return _reduce(ctx, ops[order], ctx.args.get("dim"), ctx.args.get("keepdim", False))


@aten("cumsum")
def cumsum(ctx):
    rank = ctx.rank(ctx.args["self"])
    axis = ctx.const(np.asarray(ctx.axis(int(ctx.args["dim"]), max(rank, 1)), dtype=np.int64))
    return ctx.emit("reduce.cum_sum", [ctx.value(ctx.args["self"], ctx.out_dtype), axis])


@aten("topk")
def topk(ctx):
    a = ctx.args
    rank = ctx.rank(a["self"])
    values, indices = ctx.emit_multi("reduce.top_k", [ctx.value(a["self"]), ctx.ints([int(a["k"])])],
                                     {"axis": ctx.axis(int(a.get("dim", -1)), rank),
                                      "largest": int(bool(a.get("largest", True))),
                                      "sorted": int(bool(a.get("sorted", True)))}, 2)
    return [values, indices]
