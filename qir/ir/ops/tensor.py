"""Tensor ops: shape manipulation and data movement (reshape, transpose, gather, pad, resize...).

Each op has the semantics of the newest ONNX version of the op of the same name, with every
attribute explicit; inputs that were attributes in older opsets are inputs here (the ONNX
converter in qir/frontends/onnx/ops/tensor.py upgrades older forms). Integer tensors that hold
shapes, axes or indices are int64.
"""

from __future__ import annotations

import numpy as np

from qir.ir.opdef import REQUIRED, Attr, op
from qir.ir.ops.infer import const_ints
from qir.ir.types import DType, TensorType


# -- identity ------------------------------------------------------------------------------

def _infer_identity(ctx):
    # Identity passes tensors (quantization included), sequences and optionals through.
    return [ctx.input_types[0]]


@op("tensor.identity", inputs=["input"], outputs=["output"], infer=_infer_identity)
def identity(x):
    """The input unchanged (tensor, sequence or optional); arrays are copied so callers own them."""
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, list):
        return list(x)
    return x


# -- helpers -------------------------------------------------------------------------------

#: A dim whose value inference cannot tell (same spelling the ONNX importer uses).
UNKNOWN = "?"
_INT64_MAX = np.iinfo(np.int64).max


def _t(ctx, shape, dtype_from: int = 0, dtype: DType | None = None) -> TensorType:
    """A TensorType of input ``dtype_from``'s dtype (or ``dtype``) and ``shape``."""
    return TensorType(dtype or ctx.dtype(dtype_from), None if shape is None else tuple(shape))


def _axis(axis: int, rank: int) -> int:
    """``axis`` made non-negative for ``rank`` (raises when out of range)."""
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _axes(axes, rank: int) -> list[int]:
    return [_axis(int(a), rank) for a in axes]


def _ints(array) -> list[int]:
    return [int(v) for v in np.asarray(array).reshape(-1)]


def _known(dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _const_len(ctx, i: int) -> int | None:
    """The number of elements of 1-D input ``i`` when its shape is static (shape tensors)."""
    shape = ctx.shape(i)
    if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
        return shape[0]
    return None


def _shape_from_input(ctx, i: int):
    """Output shape held in shape-tensor input ``i``: exact when constant, else of known rank."""
    value = const_ints(ctx, i)
    if value is not None:
        return value
    n = _const_len(ctx, i)
    return None if n is None else [UNKNOWN] * n


def _dim_mul(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    return UNKNOWN


def _dim_div(a, b: int):
    if isinstance(a, int):
        return a // b
    return a if b == 1 else UNKNOWN


# -- reshape family ------------------------------------------------------------------------

def reshape_shape(in_shape, target: list[int], allowzero: int = 0) -> list:
    """The output shape of a Reshape of ``in_shape`` (dims may be symbols) to ``target``.

    0 copies the input dim (unless ``allowzero``) and one -1 takes what is left. With symbolic
    dims, the -1 is resolved by cancelling the symbols that appear on both sides.
    """
    out: list = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if in_shape is None or i >= len(in_shape):
                out.append(UNKNOWN)
            else:
                out.append(in_shape[i])
        else:
            out.append(d)
    if -1 not in out:
        return out
    where = out.index(-1)
    if in_shape is None:
        out[where] = UNKNOWN
        return out
    rest = [d for i, d in enumerate(out) if i != where]
    # Cancel symbols present on both sides; what remains must make up the -1 dim.
    in_syms = [d for d in in_shape if isinstance(d, str)]
    leftover_out = []
    for d in rest:
        if isinstance(d, str) and d != UNKNOWN and d in in_syms:
            in_syms.remove(d)
        elif isinstance(d, str):
            leftover_out.append(d)
    in_int = _prod(d for d in in_shape if isinstance(d, int))
    rest_int = _prod(d for d in rest if isinstance(d, int))
    if leftover_out or UNKNOWN in in_syms:
        out[where] = UNKNOWN
    elif not in_syms:
        out[where] = in_int // rest_int if rest_int else 0
    elif len(in_syms) == 1 and rest_int and in_int == rest_int:
        out[where] = in_syms[0]
    else:
        out[where] = UNKNOWN
    return out


def _infer_reshape(ctx):
    target = const_ints(ctx, 1)
    if target is None:
        return [_t(ctx, _shape_from_input(ctx, 1))]
    return [_t(ctx, reshape_shape(ctx.shape(0), target, ctx.attrs["allowzero"]))]


@op("tensor.reshape", inputs=["data", "shape"], outputs=["reshaped"], infer=_infer_reshape,
    attrs={"allowzero": Attr("int", 0, "1: a 0 in shape means a zero-sized dim, not 'copy'")})
def reshape(data, shape, *, allowzero=0):
    """``data`` with a new shape (0 copies the input dim unless allowzero, -1 is inferred)."""
    target = [int(s) for s in np.asarray(shape).reshape(-1)]
    if not allowzero:
        target = [data.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return np.reshape(data, target)


def _infer_transpose(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [_t(ctx, None)]
    perm = ctx.attrs["perm"]
    perm = list(reversed(range(len(shape)))) if perm is None else _axes(perm, len(shape))
    return [_t(ctx, [shape[p] for p in perm])]


@op("tensor.transpose", inputs=["data"], outputs=["transposed"], infer=_infer_transpose,
    attrs={"perm": Attr("ints", None, "the permutation; None reverses the axes")})
def transpose(data, *, perm=None):
    """``data`` with its axes permuted by ``perm`` (reversed when None)."""
    return np.transpose(data, None if perm is None else [int(p) for p in perm])


def _infer_flatten(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [_t(ctx, [UNKNOWN, UNKNOWN])]
    axis = ctx.attrs["axis"]
    axis = axis + len(shape) if axis < 0 else axis

    def product(dims):
        out = 1
        for d in dims:
            out = _dim_mul(out, d)
        return out

    return [_t(ctx, [product(shape[:axis]), product(shape[axis:])])]


@op("tensor.flatten", inputs=["input"], outputs=["output"], infer=_infer_flatten,
    attrs={"axis": Attr("int", 1)})
def flatten(x, *, axis=1):
    """``x`` as a 2-D matrix: the dims before ``axis`` become rows, the rest columns."""
    axis = axis + x.ndim if axis < 0 else axis
    return np.reshape(x, (_prod(x.shape[:axis]), _prod(x.shape[axis:])))


def _infer_squeeze(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [_t(ctx, None)]
    if not ctx.has(1):
        if not _known(shape):  # a symbolic dim may or may not be 1
            return [_t(ctx, None)]
        return [_t(ctx, [d for d in shape if d != 1])]
    axes = const_ints(ctx, 1)
    if axes is None:
        n = _const_len(ctx, 1)
        return [_t(ctx, None if n is None else [UNKNOWN] * (len(shape) - n))]
    axes = set(_axes(axes, len(shape)))
    return [_t(ctx, [d for i, d in enumerate(shape) if i not in axes])]


@op("tensor.squeeze", inputs=["data", "axes?"], outputs=["squeezed"], infer=_infer_squeeze)
def squeeze(data, axes=None):
    """``data`` without the size-1 dims listed in ``axes`` (all size-1 dims when omitted)."""
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(_axes(_ints(axes), data.ndim)))


def _infer_unsqueeze(ctx):
    shape = ctx.shape(0)
    axes = const_ints(ctx, 1)
    if shape is None:
        return [_t(ctx, None)]
    if axes is None:
        n = _const_len(ctx, 1)
        return [_t(ctx, None if n is None else [UNKNOWN] * (len(shape) + n))]
    rank = len(shape) + len(axes)
    axes = set(_axes(axes, rank))
    dims = iter(shape)
    return [_t(ctx, [1 if i in axes else next(dims) for i in range(rank)])]


@op("tensor.unsqueeze", inputs=["data", "axes"], outputs=["expanded"], infer=_infer_unsqueeze)
def unsqueeze(data, axes):
    """``data`` with size-1 dims inserted at ``axes`` (positions in the output)."""
    axes = _ints(axes)
    return np.expand_dims(data, tuple(_axes(axes, data.ndim + len(axes))))


# -- concat and split ----------------------------------------------------------------------

def _infer_concat(ctx):
    shapes = [ctx.shape(i) for i in range(len(ctx))]
    known = [s for s in shapes if s is not None]
    if not known:
        return [_t(ctx, None)]
    rank = len(known[0])
    axis = _axis(ctx.attrs["axis"], rank)
    out = list(known[0])
    for i in range(rank):
        dims = [s[i] for s in known]
        if i == axis:
            if len(known) < len(shapes) or not _known(dims):
                out[i] = UNKNOWN
            else:
                out[i] = sum(dims)
        else:
            ints = [d for d in dims if isinstance(d, int)]
            out[i] = ints[0] if ints else dims[0]
    return [_t(ctx, out)]


@op("tensor.concat", inputs=["inputs*"], outputs=["concat_result"], infer=_infer_concat,
    attrs={"axis": Attr("int", REQUIRED)})
def concat(*inputs, axis):
    """The inputs joined along ``axis``."""
    return np.concatenate(inputs, axis=axis)


def _split_sizes(dim: int, split, num_outputs) -> list[int]:
    if split is not None:
        return _ints(split)
    if not num_outputs:
        raise ValueError("tensor.split needs a split input or the num_outputs attribute")
    # num_outputs parts of ceil(dim / n); the last one takes what is left, which must not be
    # negative (5 cannot be split into 4 parts this way).
    chunk = -(-dim // num_outputs)
    last = dim - chunk * (num_outputs - 1)
    if last < 0:
        raise ValueError(f"a dim of {dim} cannot be split into {num_outputs} parts of {chunk} "
                         f"and a smaller last one")
    return [chunk] * (num_outputs - 1) + [last]


def _infer_split(ctx):
    split = const_ints(ctx, 1)
    n = len(split) if split is not None else ctx.attrs["num_outputs"] or ctx.num_outputs
    if n is None:
        n = _const_len(ctx, 1)
    if n is None:
        raise ctx.fail("cannot tell the number of outputs: give split or num_outputs")
    shape = ctx.shape(0)
    if shape is None:
        return [_t(ctx, None)] * n
    axis = _axis(ctx.attrs["axis"], len(shape))
    dim = shape[axis]
    sizes = [UNKNOWN] * n
    if isinstance(dim, int) and (split is not None or not ctx.has(1)):
        try:
            sizes = _split_sizes(dim, split, n)
        except ValueError:
            pass  # an impossible split (e.g. in an If branch never taken) fails only if run
    return [_t(ctx, [s if i == axis else d for i, d in enumerate(shape)]) for s in sizes]


@op("tensor.split", inputs=["input", "split?"], outputs=["outputs*"], infer=_infer_split,
    attrs={"axis": Attr("int", 0), "num_outputs": Attr("int", None, "equal parts, the last smaller")})
def split(x, split=None, *, axis=0, num_outputs=None):
    """``x`` cut along ``axis`` into parts of sizes ``split`` or into ``num_outputs`` parts."""
    axis = _axis(axis, x.ndim)
    sizes = _split_sizes(x.shape[axis], split, num_outputs)
    bounds = np.cumsum([0] + sizes)
    return tuple(np.take(x, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(len(sizes)))


# -- slice ---------------------------------------------------------------------------------

def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice's clamped (start, end) for one axis of size ``dim``; end -1 means 'before 0'."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def slice_len(dim: int, start: int, end: int, step: int) -> int:
    start, end = slice_bounds(dim, start, end, step)
    return max(0, -(-(end - start) // step))


def _slice_params(rank: int, starts, ends, axes, steps):
    axes = list(range(len(starts))) if axes is None else _axes(axes, rank)
    steps = [1] * len(starts) if steps is None else list(steps)
    if 0 in steps:
        raise ValueError("slice steps must not be 0")
    return list(zip(axes, starts, ends, steps))


def _sym_slice_len(dim, start: int, end: int, step: int):
    """Length of a slice of a dim that may be a symbol."""
    if isinstance(dim, int):
        return slice_len(dim, start, end, step)
    if step == 1 and start == 0 and end >= _INT64_MAX // 2:
        return dim  # the whole axis
    if 0 <= start <= end and step > 0 and end - start <= 0:
        return 0
    return UNKNOWN


def _infer_slice(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [_t(ctx, None)]
    starts, ends = const_ints(ctx, 1), const_ints(ctx, 2)
    axes = const_ints(ctx, 3) if ctx.has(3) else None
    steps = const_ints(ctx, 4) if ctx.has(4) else None
    if starts is None or ends is None or (ctx.has(3) and axes is None) or (ctx.has(4) and steps is None):
        # Axes known: only those dims may change.
        if axes is not None:
            touched = set(_axes(axes, len(shape)))
            return [_t(ctx, [UNKNOWN if i in touched else d for i, d in enumerate(shape)])]
        return [_t(ctx, [UNKNOWN] * len(shape))]
    out = list(shape)
    for axis, start, end, step in _slice_params(len(shape), starts, ends, axes, steps):
        out[axis] = _sym_slice_len(shape[axis], start, end, step)
    return [_t(ctx, out)]


@op("tensor.slice", inputs=["data", "starts", "ends", "axes?", "steps?"], outputs=["output"],
    infer=_infer_slice)
def slice_(data, starts, ends, axes=None, steps=None):
    """Strided slices of ``data`` along ``axes`` (bounds clamped as ONNX Slice does)."""
    index = [slice(None)] * data.ndim
    params = _slice_params(data.ndim, _ints(starts), _ints(ends), None if axes is None else _ints(axes),
                           None if steps is None else _ints(steps))
    for axis, start, end, step in params:
        start, end = slice_bounds(data.shape[axis], start, end, step)
        index[axis] = slice(start, None if end < 0 else end, step)
    return data[tuple(index)]


# -- gather / scatter ----------------------------------------------------------------------

def _infer_gather(ctx):
    shape, ishape = ctx.shape(0), ctx.shape(1)
    if shape is None or ishape is None:
        return [_t(ctx, None)]
    axis = _axis(ctx.attrs["axis"], len(shape))
    return [_t(ctx, list(shape[:axis]) + list(ishape) + list(shape[axis + 1:]))]


@op("tensor.gather", inputs=["data", "indices"], outputs=["output"], infer=_infer_gather,
    attrs={"axis": Attr("int", 0)})
def gather(data, indices, *, axis=0):
    """Entries of ``data`` along ``axis`` at ``indices`` (negative ones count from the end)."""
    axis = _axis(axis, data.ndim)
    indices = np.asarray(indices, dtype=np.int64)
    _check_index_range(indices, data.shape[axis], "tensor.gather")
    return np.take(data, indices, axis=axis)


def _check_index_range(indices, dim: int, where: str) -> None:
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise IndexError(f"{where}: index out of range [{-dim}, {dim - 1}] "
                         f"(got {int(indices.min())}..{int(indices.max())})")


def _normalized(indices, dim: int, where: str) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    _check_index_range(indices, dim, where)
    return np.where(indices < 0, indices + dim, indices)


@op("tensor.gather_elements", inputs=["data", "indices"], outputs=["output"],
    infer=lambda ctx: [_t(ctx, ctx.shape(1))], attrs={"axis": Attr("int", 0)})
def gather_elements(data, indices, *, axis=0):
    """``output[i][j][k] = data[index[i][j][k]][j][k]`` for axis 0 (likewise for other axes)."""
    axis = _axis(axis, data.ndim)
    return np.take_along_axis(data, _normalized(indices, data.shape[axis], "tensor.gather_elements"), axis)


def _infer_gather_nd(ctx):
    shape, ishape = ctx.shape(0), ctx.shape(1)
    if shape is None or ishape is None or not isinstance(ishape[-1], int):
        return [_t(ctx, None)]
    b, last = ctx.attrs["batch_dims"], ishape[-1]
    return [_t(ctx, list(ishape[:-1]) + list(shape[b + last:]))]


@op("tensor.gather_nd", inputs=["data", "indices"], outputs=["output"], infer=_infer_gather_nd,
    attrs={"batch_dims": Attr("int", 0)})
def gather_nd(data, indices, *, batch_dims=0):
    """Slices of ``data`` at the index tuples in the last dim of ``indices`` (after batch dims)."""
    b = batch_dims
    indices = np.asarray(indices, dtype=np.int64)
    last = indices.shape[-1]
    out_shape = indices.shape[:-1] + data.shape[b + last:]
    batch = _prod(data.shape[:b])
    data_r = data.reshape((batch,) + data.shape[b:])
    ind_r = indices.reshape((batch, -1, last))
    parts = [data_r[i][tuple(ind_r[i].T)] for i in range(batch)]
    return np.stack(parts).reshape(out_shape) if parts else np.zeros(out_shape, data.dtype)


#: How scatter reductions combine an update with the value already there.
_SCATTER_UFUNCS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(out, index: tuple, updates, reduction: str):
    if reduction == "none":
        out[index] = updates
    else:
        _SCATTER_UFUNCS[reduction].at(out, index, updates)
    return out


_SCATTER_ATTRS = {"reduction": Attr("str", "none", "none, add, mul, max or min")}


@op("tensor.scatter_elements", inputs=["data", "indices", "updates"], outputs=["output"],
    infer=lambda ctx: [_t(ctx, ctx.shape(0))], attrs={"axis": Attr("int", 0), **_SCATTER_ATTRS})
def scatter_elements(data, indices, updates, *, axis=0, reduction="none"):
    """A copy of ``data`` with ``updates`` written (or reduced) at ``indices`` along ``axis``."""
    axis = _axis(axis, data.ndim)
    indices = _normalized(indices, data.shape[axis], "tensor.scatter_elements")
    index = list(np.indices(indices.shape, sparse=True))
    index[axis] = indices
    return _scatter(data.copy(), tuple(index), updates, reduction)


@op("tensor.scatter_nd", inputs=["data", "indices", "updates"], outputs=["output"],
    infer=lambda ctx: [_t(ctx, ctx.shape(0))], attrs=dict(_SCATTER_ATTRS))
def scatter_nd(data, indices, updates, *, reduction="none"):
    """A copy of ``data`` with slices at the index tuples of ``indices`` set (or reduced)."""
    indices = np.asarray(indices, dtype=np.int64)
    index = tuple(indices[..., k] for k in range(indices.shape[-1]))
    return _scatter(data.copy(), index, updates, reduction)


# -- expand, tile, pad ---------------------------------------------------------------------

def _infer_expand(ctx):
    target = _shape_from_input(ctx, 1)
    shape = ctx.shape(0)
    if target is None or shape is None:
        return [_t(ctx, None)]
    rank = max(len(target), len(shape))
    shape = [1] * (rank - len(shape)) + list(shape)
    target = [1] * (rank - len(target)) + list(target)
    out = []
    for a, b in zip(shape, target):
        if a == 1:
            out.append(b)
        elif b == 1 or a == b:
            out.append(a)
        elif isinstance(a, int) and isinstance(b, int):
            raise ValueError(f"cannot expand shape {ctx.shape(0)} to {target}")
        else:
            out.append(a if isinstance(a, int) else b if isinstance(b, int) else a)
    return [_t(ctx, out)]


@op("tensor.expand", inputs=["input", "shape"], outputs=["output"], infer=_infer_expand)
def expand(x, shape):
    """``x`` broadcast with ``shape`` (numpy rules in both directions)."""
    return np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))))


def _infer_tile(ctx):
    shape, repeats = ctx.shape(0), const_ints(ctx, 1)
    if shape is None:
        return [_t(ctx, None)]
    if repeats is None:
        return [_t(ctx, [UNKNOWN] * len(shape))]
    return [_t(ctx, [_dim_mul(d, r) for d, r in zip(shape, repeats)])]


@op("tensor.tile", inputs=["input", "repeats"], outputs=["output"], infer=_infer_tile)
def tile(x, repeats):
    """``x`` repeated ``repeats[i]`` times along each axis i."""
    return np.tile(x, _ints(repeats))


def _infer_pad(ctx):
    shape, pads = ctx.shape(0), const_ints(ctx, 1)
    if shape is None:
        return [_t(ctx, None)]
    axes = const_ints(ctx, 3) if ctx.has(3) else list(range(len(shape)))
    if pads is None or axes is None:
        return [_t(ctx, [UNKNOWN] * len(shape))]
    out = list(shape)
    for k, axis in enumerate(_axes(axes, len(shape))):
        extra = pads[k] + pads[k + len(axes)]
        if isinstance(out[axis], int):
            out[axis] += extra
        elif extra:
            out[axis] = UNKNOWN
    return [_t(ctx, out)]


#: ONNX Pad modes; numpy.pad has the same ones under the same names.
_PAD_MODES = ("constant", "reflect", "edge", "wrap")


@op("tensor.pad", inputs=["data", "pads", "constant_value?", "axes?"], outputs=["output"],
    infer=_infer_pad, attrs={"mode": Attr("str", "constant", "constant, reflect, edge or wrap")})
def pad(data, pads, constant_value=None, axes=None, *, mode="constant"):
    """``data`` padded by ``pads`` ([begins..., ends...] over ``axes``); negative pads crop."""
    axes = list(range(data.ndim)) if axes is None else _axes(_ints(axes), data.ndim)
    pads = _ints(pads)
    widths = [[0, 0] for _ in range(data.ndim)]
    for k, axis in enumerate(axes):
        widths[axis] = [pads[k], pads[k + len(axes)]]
    # Negative pads remove elements: crop first, then pad with the positive widths.
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for (b, e), d in zip(widths, data.shape))
    data = data[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode not in _PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; known: {', '.join(_PAD_MODES)}")
    if mode == "constant":
        value = 0 if constant_value is None or np.size(constant_value) == 0 else _scalar(constant_value)
        return np.pad(data, widths, mode="constant", constant_values=value)
    return np.pad(data, widths, mode=mode)


# -- shape, size, constant_of_shape, range -------------------------------------------------

def _shape_range(rank: int, start: int, end: int | None) -> range:
    return range(rank)[slice(start, end)]


def _infer_shape(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(DType.INT64, [UNKNOWN])]
    n = len(_shape_range(len(shape), ctx.attrs["start"], ctx.attrs["end"]))
    return [TensorType(DType.INT64, [n])]


@op("tensor.shape", inputs=["data"], outputs=["shape"], infer=_infer_shape,
    attrs={"start": Attr("int", 0), "end": Attr("int", None, "None: up to the last dim")})
def shape(data, *, start=0, end=None):
    """The dims of ``data`` from ``start`` to ``end`` as an int64 vector."""
    return np.array(np.shape(data)[slice(start, end)], dtype=np.int64)


@op("tensor.size", inputs=["data"], outputs=["size"], infer=lambda ctx: [TensorType(DType.INT64, ())])
def size(data):
    """The number of elements of ``data`` (an int64 scalar)."""
    return np.array(np.size(data), dtype=np.int64)


def _value_attr(value) -> np.ndarray:
    return np.zeros(1, np.float32) if value is None else np.asarray(value)


@op("tensor.constant_of_shape", inputs=["input"], outputs=["output"],
    infer=lambda ctx: [TensorType(DType.from_numpy(_value_attr(ctx.attrs["value"]).dtype),
                                  _shape_from_input(ctx, 0))],
    attrs={"value": Attr("tensor", None, "one-element tensor: the fill value and dtype (f32 0)")})
def constant_of_shape(shape, *, value=None):
    """A tensor of shape ``shape`` filled with ``value``."""
    value = _value_attr(value)
    return np.full(_ints(shape), value.reshape(-1)[0], dtype=value.dtype)


def _scalar(x):
    """The single element of a scalar (or one-element) array, as a numpy scalar."""
    return np.asarray(x).reshape(-1)[0]


def _range_len(start, limit, delta) -> int:
    start, limit, delta = (float(_scalar(v)) for v in (start, limit, delta))
    return max(int(np.ceil((limit - start) / delta)), 0)


def _infer_range(ctx):
    values = [ctx.const(i) for i in range(3)]
    if all(v is not None for v in values):
        return [_t(ctx, [_range_len(*values)])]
    return [_t(ctx, [UNKNOWN])]


@op("tensor.range", inputs=["start", "limit", "delta"], outputs=["output"], infer=_infer_range)
def range_(start, limit, delta):
    """``start, start + delta, ...`` up to (not including) ``limit``."""
    dtype = np.asarray(start).dtype
    n = _range_len(start, limit, delta)
    start, delta = _scalar(start), _scalar(delta)
    if np.issubdtype(dtype, np.integer):
        return (int(start) + np.arange(n, dtype=np.int64) * int(delta)).astype(dtype)
    # Accumulate as ONNX's loop does (start + i*delta in the op's own precision where numpy has it).
    work = dtype if dtype in (np.float32, np.float64, np.float16) else np.float32
    return (np.asarray(start, work) + np.arange(n, dtype=work) * np.asarray(delta, work)).astype(dtype)


# -- one_hot, non_zero, compress, unique ---------------------------------------------------

def _infer_one_hot(ctx):
    shape = ctx.shape(0)
    depth = ctx.const(1)
    dtype = ctx.dtype(2)
    if shape is None:
        return [TensorType(dtype, None)]
    rank = len(shape) + 1
    axis = _axis(ctx.attrs["axis"], rank)
    out = list(shape)
    out.insert(axis, UNKNOWN if depth is None else int(np.asarray(depth).reshape(-1)[0]))
    return [TensorType(dtype, out)]


@op("tensor.one_hot", inputs=["indices", "depth", "values"], outputs=["output"], infer=_infer_one_hot,
    attrs={"axis": Attr("int", -1)})
def one_hot(indices, depth, values, *, axis=-1):
    """One-hot encoding of ``indices`` along a new ``axis``: values = [off, on]."""
    depth = int(np.asarray(depth).reshape(-1)[0])
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + depth, indices)
    axis = _axis(axis, indices.ndim + 1)
    classes = np.arange(depth).reshape([depth if i == axis else 1 for i in range(indices.ndim + 1)])
    hot = np.expand_dims(indices, axis) == classes
    values = np.asarray(values).reshape(-1)
    return np.where(hot, values[1], values[0]).astype(values.dtype)


def _infer_non_zero(ctx):
    shape = ctx.shape(0)
    return [TensorType(DType.INT64, [UNKNOWN if shape is None else len(shape), UNKNOWN])]


@op("tensor.non_zero", inputs=["x"], outputs=["y"], infer=_infer_non_zero)
def non_zero(x):
    """Indices of the non-zero elements of ``x``: int64 [rank, count]."""
    if x.ndim == 0:
        return np.zeros((0, int(bool(x))), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


def _infer_compress(ctx):
    shape, axis = ctx.shape(0), ctx.attrs["axis"]
    if axis is None:
        return [_t(ctx, [UNKNOWN])]
    if shape is None:
        return [_t(ctx, None)]
    axis = _axis(axis, len(shape))
    return [_t(ctx, [UNKNOWN if i == axis else d for i, d in enumerate(shape)])]


@op("tensor.compress", inputs=["input", "condition"], outputs=["output"], infer=_infer_compress,
    attrs={"axis": Attr("int", None, "None: select from the flattened input")})
def compress(x, condition, *, axis=None):
    """The slices of ``x`` along ``axis`` where ``condition`` is true."""
    return np.compress(np.asarray(condition, dtype=bool).reshape(-1), x,
                       axis=None if axis is None else _axis(axis, x.ndim))


def _infer_unique(ctx):
    shape, axis = ctx.shape(0), ctx.attrs["axis"]
    if axis is None:
        y = [UNKNOWN]
    elif shape is None:
        y = None
    else:
        axis = _axis(axis, len(shape))
        y = [UNKNOWN if i == axis else d for i, d in enumerate(shape)]
    vec = TensorType(DType.INT64, [UNKNOWN])
    return [_t(ctx, y), vec, vec, vec]


@op("tensor.unique", inputs=["x"], outputs=["y", "indices", "inverse_indices", "counts"],
    infer=_infer_unique, attrs={"axis": Attr("int", None), "sorted": Attr("int", 1)})
def unique(x, *, axis=None, sorted=1):
    """Unique values (or slices along ``axis``), first-occurrence indices, inverse, counts."""
    axis = None if axis is None else _axis(axis, x.ndim)
    y, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True,
                                          return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not sorted:
        # Order by first occurrence; renumber the inverse map accordingly.
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        y = np.take(y, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    as64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return y, as64(first), as64(inverse), as64(counts)


# -- depth_to_space, space_to_depth --------------------------------------------------------

def _infer_depth_to_space(ctx):
    shape, bs = ctx.shape(0), ctx.attrs["blocksize"]
    if shape is None:
        return [_t(ctx, [UNKNOWN] * 4)]
    n, c, h, w = shape
    return [_t(ctx, [n, _dim_div(c, bs * bs), _dim_mul(h, bs), _dim_mul(w, bs)])]


#: (reshape of [b, c, h, w] given blocksize, transpose) of DepthToSpace by mode.
_D2S = {
    "DCR": (lambda b, c, h, w, s: (b, s, s, c // (s * s), h, w), (0, 3, 4, 1, 5, 2)),
    "CRD": (lambda b, c, h, w, s: (b, c // (s * s), s, s, h, w), (0, 1, 4, 2, 5, 3)),
}
#: (reshape, transpose) of SpaceToDepth by mode: the inverses of _D2S.
_S2D = {
    "DCR": (lambda b, c, h, w, s: (b, c, h // s, s, w // s, s), (0, 3, 5, 1, 2, 4)),
    "CRD": (lambda b, c, h, w, s: (b, c, h // s, s, w // s, s), (0, 1, 3, 5, 2, 4)),
}


def _mode(table: dict, mode: str):
    if mode not in table:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(table)}")
    return table[mode]


@op("tensor.depth_to_space", inputs=["input"], outputs=["output"], infer=_infer_depth_to_space,
    attrs={"blocksize": Attr("int", REQUIRED), "mode": Attr("str", "DCR", "DCR or CRD")})
def depth_to_space(x, *, blocksize, mode="DCR"):
    """Moves blocks of channels into [blocksize, blocksize] spatial blocks."""
    b, c, h, w = x.shape
    shape_of, perm = _mode(_D2S, mode)
    tmp = np.transpose(x.reshape(shape_of(b, c, h, w, blocksize)), perm)
    return tmp.reshape(b, c // blocksize ** 2, h * blocksize, w * blocksize)


def _infer_space_to_depth(ctx):
    shape, bs = ctx.shape(0), ctx.attrs["blocksize"]
    if shape is None:
        return [_t(ctx, [UNKNOWN] * 4)]
    n, c, h, w = shape
    return [_t(ctx, [n, _dim_mul(c, bs * bs), _dim_div(h, bs), _dim_div(w, bs)])]


@op("tensor.space_to_depth", inputs=["input"], outputs=["output"], infer=_infer_space_to_depth,
    attrs={"blocksize": Attr("int", REQUIRED), "mode": Attr("str", "DCR", "DCR or CRD")})
def space_to_depth(x, *, blocksize, mode="DCR"):
    """Moves [blocksize, blocksize] spatial blocks into channels."""
    b, c, h, w = x.shape
    shape_of, perm = _mode(_S2D, mode)
    tmp = np.transpose(x.reshape(shape_of(b, c, h, w, blocksize)), perm)
    return tmp.reshape(b, c * blocksize ** 2, h // blocksize, w // blocksize)


# -- trilu, reverse_sequence, eye_like, center_crop_pad ------------------------------------

@op("tensor.trilu", inputs=["input", "k?"], outputs=["output"],
    infer=lambda ctx: [_t(ctx, ctx.shape(0))], attrs={"upper": Attr("int", 1)})
def trilu(x, k=None, *, upper=1):
    """The upper (or lower) triangle of the last two dims of ``x``, from diagonal ``k`` on."""
    k = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    return np.triu(x, k) if upper else np.tril(x, k)


@op("tensor.reverse_sequence", inputs=["input", "sequence_lens"], outputs=["Y"],
    infer=lambda ctx: [_t(ctx, ctx.shape(0))],
    attrs={"batch_axis": Attr("int", 1), "time_axis": Attr("int", 0)})
def reverse_sequence(x, sequence_lens, *, batch_axis=1, time_axis=0):
    """Each batch entry's first ``sequence_lens[i]`` time steps reversed; the rest kept."""
    out = x.copy()
    for i, n in enumerate(_ints(sequence_lens)):
        dst = [slice(None)] * x.ndim
        src = [slice(None)] * x.ndim
        dst[batch_axis] = src[batch_axis] = i
        dst[time_axis] = slice(0, n)
        src[time_axis] = slice(n - 1, None, -1) if n > 0 else slice(0, 0)
        out[tuple(dst)] = x[tuple(src)]
    return out


@op("tensor.eye_like", inputs=["input"], outputs=["output"],
    infer=lambda ctx: [_t(ctx, ctx.shape(0), dtype=ctx.attrs["dtype"])],
    attrs={"dtype": Attr("dtype", None, "None: the input's dtype"), "k": Attr("int", 0)})
def eye_like(x, *, dtype=None, k=0):
    """A 2-D tensor shaped like ``x`` with ones on diagonal ``k`` and zeros elsewhere."""
    rows, cols = x.shape
    return np.eye(rows, cols, k, dtype=x.dtype if dtype is None else dtype.numpy)


def _infer_center_crop_pad(ctx):
    shape, target = ctx.shape(0), _shape_from_input(ctx, 1)
    if shape is None:
        return [_t(ctx, None)]
    axes = ctx.attrs["axes"]
    axes = list(range(len(shape))) if axes is None else _axes(axes, len(shape))
    out = list(shape)
    for k, axis in enumerate(axes):
        out[axis] = UNKNOWN if target is None else target[k]
    return [_t(ctx, out)]


@op("tensor.center_crop_pad", inputs=["input_data", "shape"], outputs=["output_data"],
    infer=_infer_center_crop_pad, attrs={"axes": Attr("ints", None, "None: all axes")})
def center_crop_pad(x, shape, *, axes=None):
    """``x`` center-cropped or zero-padded to ``shape`` along ``axes``."""
    axes = list(range(x.ndim)) if axes is None else _axes(axes, x.ndim)
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    out_shape = list(x.shape)
    for axis, size in zip(axes, _ints(shape)):
        dim = x.shape[axis]
        out_shape[axis] = size
        if size < dim:
            start = (dim - size) // 2
            src[axis] = slice(start, start + size)
        elif size > dim:
            start = (size - dim) // 2
            dst[axis] = slice(start, start + dim)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out


# -- resize --------------------------------------------------------------------------------
# Resize is separable: the output is computed one axis at a time. For each output position y
# along an axis, a coordinate transformation gives the source coordinate x, and a mode gives
# the weights of the input samples around x (edge-clamped).

def _source_coords(mode: str, y, scale: float, in_w: int, out_w: int, roi):
    """Source coordinates of output positions ``y`` (float64) and, for tf_crop_and_resize,
    the mask of positions outside the input (which take extrapolation_value)."""
    length = scale * in_w  # the output length before rounding
    outside = None
    if mode == "align_corners":
        x = np.zeros_like(y) if length == 1 else y * (in_w - 1) / (length - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        x = np.full_like(y, (end - start) * (in_w - 1) / 2) if length == 1 \
            else y * (end - start) * (in_w - 1) / (length - 1)
        x = x + start * (in_w - 1)
        outside = (x < 0) | (x > in_w - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full_like(y, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        # Centers the sampled region when the output length was rounded.
        offset = in_w / 2 * (1 - out_w / length)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")
    return x, outside


def _nearest_weights(ratio, scale, *, nearest_mode, **_):
    # Two taps [floor, floor + 1]; an integer coordinate has ratio 1 (it is the right tap).
    exact = ratio == 1
    rules = {
        "round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
        "floor": np.zeros_like(ratio, bool), "ceil": np.ones_like(ratio, bool),
    }
    if nearest_mode not in rules:
        raise ValueError(f"unknown nearest_mode {nearest_mode!r}")
    right = exact | rules[nearest_mode]
    return np.stack([~right, right], axis=-1).astype(np.float64)


def _linear_weights(ratio, scale, *, antialias, **_):
    scale = min(scale, 1.0) if antialias else 1.0
    start = int(np.floor(-1 / scale) + 1)
    taps = np.arange(start, 2 - start)
    w = np.clip(1 - np.abs((taps[None, :] - ratio[:, None]) * scale), 0, 1)
    return w / w.sum(axis=-1, keepdims=True)


def _cubic_kernel(x, a: float):
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _cubic_weights(ratio, scale, *, antialias, cubic_coeff_a, **_):
    scale = min(scale, 1.0) if antialias else 1.0
    start = int(np.floor(-2 / scale) + 1)
    taps = np.arange(start, 2 - start)
    w = _cubic_kernel((taps[None, :] - ratio[:, None]) * scale, cubic_coeff_a)
    return w / w.sum(axis=-1, keepdims=True) if antialias else w


#: Resize modes → functions giving the weights of the taps around each source coordinate.
_RESIZE_WEIGHTS = {"nearest": _nearest_weights, "linear": _linear_weights, "cubic": _cubic_weights}


def _resize_axis(data, axis: int, scale: float, out_w: int, roi, attrs: dict):
    in_w = data.shape[axis]
    if out_w == 0:
        return np.empty(data.shape[:axis] + (0,) + data.shape[axis + 1:], data.dtype)
    y = np.arange(out_w, dtype=np.float64)
    x, outside = _source_coords(attrs["coordinate_transformation_mode"], y, scale, in_w, out_w, roi)
    base = np.floor(x)
    ratio = np.where(x == base, 1.0, x - base)  # the tap left of x is preferred
    weights = _RESIZE_WEIGHTS[attrs["mode"]](ratio, scale, **attrs)
    n = weights.shape[1]
    # The n taps nearest to x, ties going to the smaller index.
    if n % 2 == 0:
        start = base - n // 2 + np.where(x == base, 0, 1)
    else:
        frac = x - base
        start = base - (n - 1) // 2 + np.where(frac <= 0.5, 0, 1)
    taps = start.astype(np.int64)[:, None] + np.arange(n)[None, :]
    if attrs["exclude_outside"]:
        weights = np.where((taps < 0) | (taps >= in_w), 0.0, weights)
        total = weights.sum(axis=-1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    gathered = np.take(data, np.clip(taps, 0, in_w - 1), axis=axis)
    shape = (1,) * axis + weights.shape + (1,) * (data.ndim - axis - 1)
    out = (gathered * weights.reshape(shape)).sum(axis=axis + 1)
    if outside is not None and outside.any():
        mask = outside.reshape((1,) * axis + (out_w,) + (1,) * (data.ndim - axis - 1))
        out = np.where(mask, attrs["extrapolation_value"], out)
    return out


def _present(array):
    """An optional input that ONNX may give as an empty tensor: None when absent or empty."""
    return None if array is None or np.size(array) == 0 else np.asarray(array)


def resize_plan(in_shape, scales, sizes, axes, policy: str):
    """Per-axis (scale, output size) of a Resize: scales and sizes as given, over ``axes``."""
    rank = len(in_shape)
    axes = list(range(rank)) if axes is None else _axes(axes, rank)
    scale_of = [1.0] * rank
    size_of = list(in_shape)
    if sizes is not None:
        sizes = _ints(sizes)
        for k, axis in enumerate(axes):
            scale_of[axis] = sizes[k] / in_shape[axis]
            size_of[axis] = sizes[k]
        if policy != "stretch":
            pick = {"not_larger": min, "not_smaller": max}[policy]
            common = pick(scale_of[a] for a in axes)
            for axis in axes:
                scale_of[axis] = common
                size_of[axis] = int(common * in_shape[axis] + 0.5)
    elif scales is not None:
        scales = [float(s) for s in np.asarray(scales).reshape(-1)]
        for k, axis in enumerate(axes):
            scale_of[axis] = scales[k]
            size_of[axis] = int(np.floor(scales[k] * in_shape[axis]))
    else:
        raise ValueError("Resize needs scales or sizes")
    return axes, scale_of, size_of


def _resize_roi(roi, axes, rank):
    """Per-axis [start, end] of the region of interest (the whole axis when not given)."""
    out = [(0.0, 1.0)] * rank
    if roi is not None:
        roi = [float(v) for v in roi.reshape(-1)]
        n = len(roi) // 2
        for k, axis in enumerate(axes[:n] if len(axes) == n else range(n)):
            out[axis] = (roi[k], roi[k + n])
    return out


def _to_dtype(x, dtype):
    """Float64 results cast back, rounding and saturating for integer types."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


_RESIZE_ATTRS = {
    "antialias": Attr("int", 0),
    "axes": Attr("ints", None, "None: all axes"),
    "coordinate_transformation_mode": Attr("str", "half_pixel"),
    "cubic_coeff_a": Attr("float", -0.75),
    "exclude_outside": Attr("int", 0),
    "extrapolation_value": Attr("float", 0.0),
    "keep_aspect_ratio_policy": Attr("str", "stretch", "stretch, not_larger or not_smaller"),
    "mode": Attr("str", "nearest", "nearest, linear or cubic"),
    "nearest_mode": Attr("str", "round_prefer_floor", "round_prefer_floor/ceil, floor or ceil"),
}


def _infer_resize(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [_t(ctx, None)]
    rank = len(shape)
    axes = ctx.attrs["axes"]
    touched = set(range(rank) if axes is None else _axes(axes, rank))
    scales, sizes = (_present(ctx.const(i)) if ctx.has(i) else None for i in (2, 3))
    given = [ctx.has(i) and _const_len(ctx, i) != 0 for i in (2, 3)]
    scales_ok = scales is not None or not given[0]
    sizes_ok = sizes is not None or not given[1]
    if (scales is not None or sizes is not None) and scales_ok and sizes_ok:
        if all(isinstance(shape[a], int) for a in touched):
            in_shape = [d if isinstance(d, int) else 1 for d in shape]
            _, _, out = resize_plan(in_shape, scales, sizes, axes, ctx.attrs["keep_aspect_ratio_policy"])
            return [_t(ctx, [out[i] if i in touched else d for i, d in enumerate(shape)])]
    return [_t(ctx, [UNKNOWN if i in touched else d for i, d in enumerate(shape)])]


@op("tensor.resize", inputs=["X", "roi?", "scales?", "sizes?"], outputs=["Y"], infer=_infer_resize,
    attrs=_RESIZE_ATTRS)
def resize(x, roi=None, scales=None, sizes=None, **attrs):
    """``x`` resized by ``scales`` or to ``sizes`` (nearest, linear or cubic interpolation)."""
    roi, scales, sizes = _present(roi), _present(scales), _present(sizes)
    axes, scale_of, size_of = resize_plan(x.shape, scales, sizes, attrs["axes"],
                                          attrs["keep_aspect_ratio_policy"])
    rois = _resize_roi(roi, axes, x.ndim)
    out = x.astype(np.float64)
    for axis in axes:
        if (np.isclose(scale_of[axis], 1.0) and size_of[axis] == out.shape[axis]
                and rois[axis] == (0.0, 1.0)):
            continue  # nothing to do along this axis
        out = _resize_axis(out, axis, scale_of[axis], size_of[axis], rois[axis], attrs)
    return _to_dtype(out, x.dtype)


# -- grid_sample, affine_grid --------------------------------------------------------------

def _reflect(x, lo: float, hi: float):
    """Reflect coordinates into [lo, hi] by the nearer border, repeatedly."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    d = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    n = np.floor(d / span)
    r = d - n * span
    even = n % 2 == 0
    from_below = np.where(even, lo + r, hi - r)
    from_above = np.where(even, hi - r, lo + r)
    return np.where(below, from_below, np.where(above, from_above, x))


def _keys_cubic(t, a: float = -0.75):
    """Weights of the taps at offsets -1, 0, 1, 2 from floor(x), for t = x - floor(x)."""
    return np.stack([_cubic_kernel(t + 1, a), _cubic_kernel(t, a), _cubic_kernel(1 - t, a),
                     _cubic_kernel(2 - t, a)], axis=-1)


def _grid_taps(x, mode: str):
    """(tap indices, weights), each of shape x.shape + (taps,), for one spatial axis."""
    if mode == "nearest":
        return np.rint(x)[..., None].astype(np.int64), np.ones(x.shape + (1,))
    base = np.floor(x)
    t = x - base
    if mode == "linear":
        offsets, weights = np.arange(2), np.stack([1 - t, t], axis=-1)
    elif mode == "cubic":
        offsets, weights = np.arange(-1, 3), _keys_cubic(t)
    else:
        raise ValueError(f"unknown grid_sample mode {mode!r}; known: nearest, linear, cubic")
    return base.astype(np.int64)[..., None] + offsets, weights


#: GridSample's older mode names.
_GRID_MODES = {"bilinear": "linear", "bicubic": "cubic"}


def _infer_grid_sample(ctx):
    shape, gshape = ctx.shape(0), ctx.shape(1)
    if shape is None or gshape is None:
        return [_t(ctx, None)]
    return [_t(ctx, [shape[0], shape[1], *gshape[1:-1]])]


@op("tensor.grid_sample", inputs=["X", "grid"], outputs=["Y"], infer=_infer_grid_sample,
    attrs={"align_corners": Attr("int", 0), "mode": Attr("str", "linear", "nearest, linear or cubic"),
           "padding_mode": Attr("str", "zeros", "zeros, border or reflection")})
def grid_sample(x, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    """Samples ``x`` (N, C, *dims) at the normalized grid points (N, *out, ndims) of ``grid``."""
    mode = _GRID_MODES.get(mode, mode)
    dims = x.shape[2:]
    k = len(dims)
    # The denormalization runs in the grid's precision (at least f32), as PyTorch does.
    work = np.float64 if grid.dtype == np.float64 else np.float32
    grid = grid.astype(work)
    taps, weights, valids = [], [], []
    for i, d in enumerate(dims):
        g = grid[..., k - 1 - i]  # the grid lists coordinates innermost (x = width) first
        pos = (g + 1) / 2 * (d - 1) if align_corners else ((g + 1) * d - 1) / 2
        lo, hi = (0.0, d - 1.0) if align_corners else (-0.5, d - 0.5)
        pos = pos.astype(np.float64)
        if mode == "nearest":
            pos = np.rint(pos)
        if padding_mode == "border":
            pos = np.where((pos < lo) | (pos > hi), np.clip(pos, 0, d - 1), pos)
        elif padding_mode == "reflection":
            pos = _reflect(pos, lo, hi)
        idx, w = _grid_taps(pos, mode)
        if padding_mode == "border":
            idx = np.clip(idx, 0, d - 1)
        elif padding_mode == "reflection":
            idx = np.clip(np.trunc(_reflect(idx.astype(np.float64), lo, hi)).astype(np.int64), 0, d - 1)
        valids.append((idx >= 0) & (idx < d))
        taps.append(np.clip(idx, 0, d - 1))
        weights.append(w)
    out = np.zeros(x.shape[:2] + grid.shape[1:-1], dtype=np.float64)
    channels_last = np.moveaxis(x.astype(np.float64), 1, -1)
    batch = np.arange(x.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2))
    # Sum over every combination of taps of the spatial axes (separable weights).
    for combo in np.ndindex(*[w.shape[-1] for w in weights]):
        w = np.ones(grid.shape[:-1])
        valid = np.ones(grid.shape[:-1], bool)
        index = []
        for i, t in enumerate(combo):
            w = w * weights[i][..., t]
            valid &= valids[i][..., t]
            index.append(taps[i][..., t])
        # data[n, :, i0, i1, ...] for every grid point: (N, *out, C) → (N, C, *out)
        picked = np.moveaxis(channels_last[(batch, *index)], -1, 1)
        out += picked * np.expand_dims(w * valid, 1)
    return _to_dtype(out, x.dtype)


def _affine_base(sizes, align_corners: int):
    """Normalized coordinates of every point of a grid of ``sizes`` (D, H, W or H, W)."""
    axes = []
    for n in sizes:
        if align_corners:
            axes.append(np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(n))
        else:
            axes.append((np.arange(n) * 2 + 1) / n - 1)
    mesh = np.meshgrid(*axes, indexing="ij")
    # Homogeneous points (x, y[, z], 1) with x along the last (width) axis.
    return np.stack([*reversed(mesh), np.ones(tuple(sizes))], axis=-1)


def _infer_affine_grid(ctx):
    size = const_ints(ctx, 1)
    n = _const_len(ctx, 1)
    if size is not None:
        spatial = size[2:]
        return [_t(ctx, [size[0], *spatial, len(spatial)])]
    if n is not None:
        return [_t(ctx, [UNKNOWN] * (n - 1) + [n - 2])]
    return [_t(ctx, None)]


@op("tensor.affine_grid", inputs=["theta", "size"], outputs=["grid"], infer=_infer_affine_grid,
    attrs={"align_corners": Attr("int", 0)})
def affine_grid(theta, size, *, align_corners=0):
    """Normalized sampling grids (N, *spatial, ndims) of the affine maps ``theta`` (N, ndims, ndims+1)."""
    size = _ints(size)
    base = _affine_base(size[2:], align_corners)
    points = base.reshape(-1, base.shape[-1])
    grid = np.einsum("nij,pj->npi", theta.astype(np.float64), points)
    return grid.reshape((theta.shape[0], *size[2:], theta.shape[1])).astype(theta.dtype)


# -- tensor_scatter (KV-cache update) ------------------------------------------------------

TENSOR_SCATTER_MODES = ("linear", "circular")


def _verify_tensor_scatter(ctx):
    mode = ctx.attrs["mode"]
    if mode not in TENSOR_SCATTER_MODES:
        raise ctx.fail(f"mode must be linear or circular, got {mode!r}")
    cache, update = ctx.shape(0), ctx.shape(1)
    if cache is None:
        return
    try:
        axis = _axis(ctx.attrs["axis"], len(cache))
    except ValueError as exc:
        raise ctx.fail(str(exc)) from None
    if axis == 0:
        raise ctx.fail("axis must not be the batch axis 0")
    if update is None:
        return
    if len(update) != len(cache):
        raise ctx.fail(f"update has rank {len(update)}, past_cache rank {len(cache)}; they must match")
    for i, (c, u) in enumerate(zip(cache, update)):
        if not (isinstance(c, int) and isinstance(u, int)):
            continue
        if (i != axis and c != u) or (i == axis and u > c):
            raise ctx.fail(f"update shape {list(update)} does not fit past_cache shape {list(cache)} "
                           f"(dims must match except along axis {axis}, where update's may be shorter)")


@op("tensor.tensor_scatter", inputs=["past_cache", "update", "write_indices?"], outputs=["present_cache"],
    attrs={"mode": Attr("str", "linear", "linear | circular"),
           "axis": Attr("int", -2, "the sequence axis; never 0, the batch axis")},
    infer=lambda ctx: [_t(ctx, ctx.shape(0))], verify=_verify_tensor_scatter)
def tensor_scatter(past_cache, update, write_indices=None, *, mode="linear", axis=-2):
    """A copy of ``past_cache`` with ``update`` written along ``axis`` at position
    write_indices[b] (0 when omitted) of each batch entry b; in "circular" mode positions wrap
    around the cache length (a KV-cache update)."""
    if mode not in TENSOR_SCATTER_MODES:
        raise ValueError(f"mode must be linear or circular, got {mode!r}")
    axis = _axis(axis, past_cache.ndim)
    if axis == 0:
        raise ValueError("axis must not be the batch axis 0")
    if update.ndim != past_cache.ndim or any(
            (i != axis and c != u) or (i == axis and u > c)
            for i, (c, u) in enumerate(zip(past_cache.shape, update.shape))):
        raise ValueError(f"update shape {list(update.shape)} does not fit past_cache shape "
                         f"{list(past_cache.shape)} along axis {axis}")
    batch, length, steps = past_cache.shape[0], past_cache.shape[axis], update.shape[axis]
    starts = np.zeros(batch, np.int64) if write_indices is None else np.asarray(write_indices, np.int64).reshape(-1)
    if starts.shape[0] != batch:
        raise ValueError(f"write_indices has {starts.shape[0]} entries for a batch of {batch}")
    out = past_cache.copy()
    for b in range(batch):
        positions = starts[b] + np.arange(steps, dtype=np.int64)
        if mode == "circular":
            positions %= max(length, 1)
        elif steps and (positions[0] < 0 or positions[-1] >= length):
            raise ValueError(f"batch entry {b}: writing {steps} steps at index {int(starts[b])} "
                             f"overruns the cache length {length} (use mode='circular' to wrap)")
        # Move the sequence axis to the front of this entry (views), then write whole slabs.
        np.moveaxis(out[b], axis - 1, 0)[positions] = np.moveaxis(update[b], axis - 1, 0)
    return out
