"""ONNX → qir converters for the reduce family: Reduce*, ArgMax/ArgMin, TopK, CumSum, CumProd.

Older opset forms are upgraded here: the reductions' ``axes`` attribute (an input since opset
13 for ReduceSum and 18 for the others) and TopK's ``k`` attribute (an input since opset 10)
become constant int64 inputs. Constant axes are made non-negative and sorted when the input's
rank is known.
"""

from __future__ import annotations

from qir.frontends.onnx.registry import converter, simple
from qir.ir.ops.reduce import REDUCE_OPS

#: The opset from which each reduction takes ``axes`` as an input (the others: 18).
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _rank(value) -> int | None:
    shape = getattr(value.type, "shape", None) if value is not None else None
    return None if shape is None else len(shape)


def _normalized_axes(ctx, axes: list[int], rank: int | None) -> list[int]:
    if rank is None:
        return axes
    for a in axes:
        if not -rank <= a < max(rank, 1):
            raise ctx.fail(f"axis {a} is out of range for an input of rank {rank}")
    return sorted({a % rank if rank else 0 for a in axes})


def _axes_input(ctx, since: int):
    """The axes as a Value (None when absent), constants normalized."""
    if ctx.opset < since:
        axes = ctx.attrs.get("axes")
        if axes is None:
            return None
        return ctx.const_ints(_normalized_axes(ctx, [int(a) for a in axes], _rank(ctx.inputs[0])))
    value = ctx.inputs[1] if len(ctx.inputs) > 1 else None
    const = ctx.value_of(value)
    if const is None or const.size == 0:
        return value
    return ctx.const_ints(_normalized_axes(ctx, [int(a) for a in const.reshape(-1)], _rank(ctx.inputs[0])))


def _reduce_converter(op_type: str, qir_op: str) -> None:
    since = _AXES_INPUT_SINCE.get(op_type, 18)

    def convert(ctx):
        axes = _axes_input(ctx, since)
        attrs = {"keepdims": int(ctx.attrs.get("keepdims", 1)),
                 "noop_with_empty_axes": int(ctx.attrs.get("noop_with_empty_axes", 0))}
        inputs = [ctx.inputs[0]] + ([axes] if axes is not None else [])
        return ctx.emit(qir_op, inputs, attrs)

    convert.__name__ = f"convert_{op_type}"
    converter(op_type, qir_op=qir_op)(convert)


for _op_type, _qir_op in REDUCE_OPS.items():
    _reduce_converter(_op_type, _qir_op)


def _arg_converter(op_type: str, qir_op: str) -> None:
    def convert(ctx):
        rank = _rank(ctx.inputs[0])
        axis = int(ctx.attrs.get("axis", 0))
        if rank is not None:
            axis = _normalized_axes(ctx, [axis], rank)[0]
        attrs = {"axis": axis, "keepdims": int(ctx.attrs.get("keepdims", 1)),
                 "select_last_index": int(ctx.attrs.get("select_last_index", 0))}
        return ctx.emit(qir_op, [ctx.inputs[0]], attrs)

    converter(op_type, qir_op=qir_op)(convert)


_arg_converter("ArgMax", "reduce.argmax")
_arg_converter("ArgMin", "reduce.argmin")


@converter("TopK", qir_op="reduce.top_k")
def top_k(ctx):
    """TopK-1 had ``k`` as an attribute; TopK-11 added ``largest`` and ``sorted``."""
    k = ctx.inputs[1] if ctx.opset >= 10 else ctx.const_ints([int(ctx.attrs["k"])])
    axis = int(ctx.attrs.get("axis", -1))
    rank = _rank(ctx.inputs[0])
    if rank is not None:
        axis = _normalized_axes(ctx, [axis], rank)[0]
    attrs = {"axis": axis, "largest": int(ctx.attrs.get("largest", 1)),
             "sorted": int(ctx.attrs.get("sorted", 1))}
    return ctx.emit("reduce.top_k", [ctx.inputs[0], k], attrs)


simple("CumSum", "reduce.cum_sum")
simple("CumProd", "reduce.cum_prod")

