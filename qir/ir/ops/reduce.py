"""Reduce ops: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare, ArgMax/ArgMin,
TopK, CumSum and CumProd.

Each op has the semantics of the newest ONNX version of the op of the same name, with every
attribute explicit. The reductions take ``axes`` as an optional int64 input (older ONNX opsets had
it as an attribute; qir/frontends/onnx/ops/reduce.py upgrades them). A reduction over an empty
set of values gives the identity element of the reduction (0 for sums, 1 for products, -inf
or the type's minimum for max, ...), as the ONNX specification asks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from qir.ir.opdef import Attr, op
from qir.ir.ops.infer import const_ints, normalize_axis, same_as
from qir.ir.types import DType, TensorType

# -- helpers -------------------------------------------------------------------------------

#: Float types numpy computes poorly or slowly in: reductions accumulate them in float32.
_LOW_PRECISION = {np.dtype(np.float16)} | {DType.parse(s).numpy for s in (
    "bf16", "f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz")}


def _widen(x: np.ndarray) -> np.ndarray:
    """``x`` in float32 when it is a low-precision float (the result is cast back later)."""
    return x.astype(np.float32) if x.dtype in _LOW_PRECISION else x


def reduction_axes(rank: int, axes, noop_with_empty_axes: int) -> tuple[int, ...]:
    """The sorted, non-negative axes a reduction runs over.

    Missing or empty ``axes`` mean every axis, unless ``noop_with_empty_axes`` is set: then no
    axis at all (the reduction's elementwise part still applies, e.g. SumSquare squares).
    """
    values = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if rank == 0:
        # A scalar: axis 0 (or -1) names the scalar itself; there is nothing to reduce over.
        for a in values:
            normalize_axis(a, rank)  # still rejects a bad axis
        return ()
    if not values:
        return () if noop_with_empty_axes else tuple(range(rank))
    return tuple(sorted({normalize_axis(a, rank) for a in values}))


def reduced_shape(shape, axes: tuple[int, ...], keepdims: int):
    """``shape`` after reducing ``axes`` (dims may be symbols)."""
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _infer_reduce(ctx):
    """Output type of a reduction: the input dtype, the reduced shape when axes are known."""
    t = ctx.type(0)
    if ctx.has(1):
        axes = const_ints(ctx, 1)
        if axes is None:  # axes computed at run time: the shape is data-dependent
            return [TensorType(t.dtype, None)]
    else:
        axes = []
    if t.shape is None:
        return [TensorType(t.dtype, None)]
    axes = reduction_axes(len(t.shape), axes, ctx.attrs["noop_with_empty_axes"])
    return [TensorType(t.dtype, reduced_shape(t.shape, axes, ctx.attrs["keepdims"]))]


def _extreme(dtype: np.dtype, largest: bool):
    """The identity element of max (``largest=False``: the smallest value) or of min."""
    if dtype == np.bool_:
        return bool(largest)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.min if not largest else info.max
    return -np.inf if not largest else np.inf


def _reduce_max(x, axes, keepdims):
    return np.max(x, axis=axes, keepdims=keepdims, initial=_extreme(x.dtype, largest=False))


def _reduce_min(x, axes, keepdims):
    return np.min(x, axis=axes, keepdims=keepdims, initial=_extreme(x.dtype, largest=True))


def _as_float(x):
    """``x`` as a float array fit for accumulation (ints go to float64, low precision to f32)."""
    return x.astype(np.float64) if x.dtype.kind in "iub" else _widen(x)


def _reduce_mean(x, axes, keepdims):
    # Integer means truncate when cast back to the input dtype, as ONNX's reference does.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(_as_float(x), axis=axes, keepdims=keepdims)


def _reduce_l2(x, axes, keepdims):
    return np.sqrt(np.sum(np.square(_as_float(x)), axis=axes, keepdims=keepdims))


def _reduce_log_sum_exp(x, axes, keepdims):
    x = _as_float(x)
    # Shift by the maximum for stability; an all -inf (or empty) slice keeps a shift of 0.
    shift = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    shift = np.where(np.isfinite(shift), shift, 0).astype(x.dtype)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - shift), axis=axes, keepdims=True)) + shift
    return out if keepdims else np.squeeze(out, axis=axes)


def _log(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


#: ONNX op type → (qir name suffix, fn(x, axes, keepdims) -> array).
_REDUCTIONS: dict[str, tuple[str, Callable]] = {
    "ReduceSum": ("sum", lambda x, a, k: np.sum(_widen(x), axis=a, keepdims=k)),
    "ReduceMean": ("mean", _reduce_mean),
    "ReduceMax": ("max", _reduce_max),
    "ReduceMin": ("min", _reduce_min),
    "ReduceProd": ("prod", lambda x, a, k: np.prod(_widen(x), axis=a, keepdims=k)),
    "ReduceL1": ("l1", lambda x, a, k: np.sum(np.abs(_widen(x)), axis=a, keepdims=k)),
    "ReduceL2": ("l2", _reduce_l2),
    "ReduceLogSum": ("log_sum", lambda x, a, k: _log(np.sum(_widen(x), axis=a, keepdims=k))),
    "ReduceLogSumExp": ("log_sum_exp", _reduce_log_sum_exp),
    "ReduceSumSquare": ("sum_square", lambda x, a, k: np.sum(np.square(_widen(x)), axis=a, keepdims=k)),
}

#: ONNX op type → qir op name, for the ONNX converters.
REDUCE_OPS: dict[str, str] = {onnx_name: f"reduce.{suffix}" for onnx_name, (suffix, _) in _REDUCTIONS.items()}

_REDUCE_ATTRS = {
    "keepdims": Attr("int", 1, "keep reduced axes as dims of size 1"),
    "noop_with_empty_axes": Attr("int", 0, "empty/missing axes reduce nothing (instead of all)"),
}


def _register_reduction(onnx_name: str, suffix: str, fn: Callable) -> None:
    def kernel(data, axes=None, *, keepdims, noop_with_empty_axes):
        reduce_axes = reduction_axes(data.ndim, axes, noop_with_empty_axes)
        return np.asarray(fn(data, reduce_axes, bool(keepdims))).astype(data.dtype, copy=False)

    kernel.__name__ = suffix
    kernel.__doc__ = (f"ONNX {onnx_name}: reduce ``data`` over ``axes`` (all axes when missing or "
                      f"empty, none when noop_with_empty_axes=1).")
    op(f"reduce.{suffix}", inputs=["data", "axes?"], outputs=["reduced"], attrs=_REDUCE_ATTRS,
       infer=_infer_reduce)(kernel)


for _onnx_name, (_suffix, _fn) in _REDUCTIONS.items():
    _register_reduction(_onnx_name, _suffix, _fn)


# -- ArgMax / ArgMin -----------------------------------------------------------------------

def _infer_arg(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(DType.INT64, None)]
    axis = normalize_axis(ctx.attrs["axis"], len(shape))
    return [TensorType(DType.INT64, reduced_shape(shape, (axis,), ctx.attrs["keepdims"]))]


_ARG_ATTRS = {
    "axis": Attr("int", 0),
    "keepdims": Attr("int", 1),
    "select_last_index": Attr("int", 0, "on ties, the last index instead of the first"),
}


def _arg_extreme(fn, data, axis, keepdims, select_last_index):
    axis = normalize_axis(axis, data.ndim)
    if select_last_index:
        flipped = np.flip(data, axis=axis)
        index = data.shape[axis] - 1 - fn(flipped, axis=axis, keepdims=bool(keepdims))
    else:
        index = fn(data, axis=axis, keepdims=bool(keepdims))
    return np.asarray(index, dtype=np.int64)


@op("reduce.argmax", inputs=["data"], outputs=["reduced"], attrs=_ARG_ATTRS, infer=_infer_arg)
def argmax(data, *, axis, keepdims, select_last_index):
    """Index of the largest element along ``axis`` (first one on ties unless select_last_index)."""
    return _arg_extreme(np.argmax, data, axis, keepdims, select_last_index)


@op("reduce.argmin", inputs=["data"], outputs=["reduced"], attrs=_ARG_ATTRS, infer=_infer_arg)
def argmin(data, *, axis, keepdims, select_last_index):
    """Index of the smallest element along ``axis`` (first one on ties unless select_last_index)."""
    return _arg_extreme(np.argmin, data, axis, keepdims, select_last_index)


# -- TopK ----------------------------------------------------------------------------------

def _infer_top_k(ctx):
    t = ctx.type(0)
    k = const_ints(ctx, 1)
    if t.shape is None or k is None:
        return [TensorType(t.dtype, None), TensorType(DType.INT64, None)]
    axis = normalize_axis(ctx.attrs["axis"], len(t.shape))
    shape = tuple(k[0] if i == axis else d for i, d in enumerate(t.shape))
    return [TensorType(t.dtype, shape), TensorType(DType.INT64, shape)]


def stable_order(x: np.ndarray, axis: int, largest: bool) -> np.ndarray:
    """Indices sorting ``x`` along ``axis`` (descending when ``largest``), ties by lower index."""
    if not largest:
        return np.argsort(x, axis=axis, kind="stable")
    # Descending with ties in ascending index order: sort the reversed array ascending (stable),
    # read the result backwards and map the indices back to the unreversed array.
    n = x.shape[axis]
    order = np.argsort(np.flip(x, axis=axis), axis=axis, kind="stable")
    return n - 1 - np.flip(order, axis=axis)


@op("reduce.top_k", inputs=["X", "K"], outputs=["Values", "Indices"], infer=_infer_top_k,
    attrs={"axis": Attr("int", -1), "largest": Attr("int", 1), "sorted": Attr("int", 1)})
def top_k(x, k, *, axis, largest, sorted):  # noqa: A002  (ONNX's attribute name)
    """The ``k`` largest (or smallest) elements along ``axis`` and their indices.

    Results are always sorted (sorted=0 leaves the order unspecified); equal values keep the
    lower index first, as ONNX asks.
    """
    axis = normalize_axis(axis, x.ndim)
    k = int(np.asarray(k).reshape(-1)[0])
    if not 0 <= k <= x.shape[axis]:
        raise ValueError(f"k={k} is out of range for axis {axis} of size {x.shape[axis]}")
    order = np.take(stable_order(x, axis, bool(largest)), np.arange(k), axis=axis)
    return np.take_along_axis(x, order, axis=axis), order.astype(np.int64)


# -- CumSum / CumProd ----------------------------------------------------------------------

def _cumulative(ufunc: np.ufunc, x: np.ndarray, axis, exclusive: int, reverse: int) -> np.ndarray:
    axis = normalize_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim)
    if x.ndim == 0:
        return x.copy()
    data = np.flip(x, axis=axis) if reverse else x
    out = ufunc.accumulate(data, axis=axis, dtype=x.dtype)
    if exclusive:
        # Shift by one along the axis, starting from the identity (0 for sums, 1 for products).
        first = np.full_like(np.take(out, [0], axis=axis), ufunc.identity)
        out = np.concatenate([first, np.take(out, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
    return np.flip(out, axis=axis) if reverse else out


_CUM_ATTRS = {"exclusive": Attr("int", 0, "the j-th output excludes the j-th input"),
              "reverse": Attr("int", 0, "accumulate from the end of the axis")}


@op("reduce.cum_sum", inputs=["x", "axis"], outputs=["y"], attrs=_CUM_ATTRS, infer=same_as(0))
def cum_sum(x, axis, *, exclusive, reverse):
    """Cumulative sum of ``x`` along ``axis`` (a scalar input)."""
    return _cumulative(np.add, x, axis, exclusive, reverse)


@op("reduce.cum_prod", inputs=["x", "axis"], outputs=["y"], attrs=_CUM_ATTRS, infer=same_as(0))
def cum_prod(x, axis, *, exclusive, reverse):
    """Cumulative product of ``x`` along ``axis`` (a scalar input)."""
    return _cumulative(np.multiply, x, axis, exclusive, reverse)
