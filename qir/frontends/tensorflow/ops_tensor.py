"""TF → qir converters for tensor ops: reshape, transpose, concat, pad, squeeze, slicing (with
StridedSlice's masks), pack/unpack, split, gather, tile, fill, range, shape queries.

Index-like inputs (shapes, axes, pads, begins) are int32 or int64 in TF; qir takes int64, so
they are cast (folded at import when constant). Ops whose attributes must be known when the
graph is built (Transpose's perm, StridedSlice's begin/end/strides, split sizes) need those
inputs to be constants, as they are in models with static shapes.
"""

from __future__ import annotations

import numpy as np

from qir.frontends.tensorflow.ops_nn import to_first, to_last
from qir.frontends.tensorflow.registry import converter

INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)


def _rank(ctx, i: int = 0) -> int:
    shape = ctx.in_shape(i)
    if shape is None:
        raise ctx.fail(f"needs the rank of input {i}, which TensorFlow does not know")
    return len(shape)


def _static(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def reshape(ctx, x, shape):
    return ctx.emit("tensor.reshape", [x, shape], {"allowzero": 1})  # a TF 0 is a zero-size dim


@converter("IdentityN")
def identity_n(ctx):
    return list(ctx.inputs)


@converter("Reshape")
def reshape_op(ctx):
    target = ctx.inputs[1]
    out = ctx.out_shape()
    if target.const is None and out is not None and sum(d is None for d in out) == 1 \
            and all(d is None or d > 0 for d in out):
        # A target computed from the run-time shape (Keras Flatten: [shape(x)[0], -1]) whose
        # result TF knows up to one dim: the same reshape with that dim as -1, so that the
        # shape arithmetic drops out of the graph.
        target = ctx.ints([-1 if d is None else d for d in out])
    return reshape(ctx, ctx.inputs[0], ctx.int64(target))


@converter("Transpose")
def transpose(ctx):
    perm = [int(p) for p in ctx.need_const(1, "perm")]
    return ctx.transpose(ctx.inputs[0], perm)


@converter("ConcatV2", "Concat")
def concat(ctx):
    if ctx.type == "ConcatV2":
        values, axis = ctx.inputs[:-1], int(ctx.need_const(len(ctx.inputs) - 1, "axis"))
    else:
        values, axis = ctx.inputs[1:], int(ctx.need_const(0, "concat_dim"))
    rank = len(ctx.out_shape())
    return ctx.emit("tensor.concat", values, {"axis": axis % rank})


@converter("Pad", "PadV2", "MirrorPad")
def pad(ctx):
    x, paddings = ctx.inputs[:2]
    # TF's [rank, 2] (begin, end) pairs → ONNX's [begins..., ends...]
    pads = ctx.emit("tensor.reshape", [ctx.transpose(ctx.int64(paddings), [1, 0]), ctx.ints([-1])],
                    {"allowzero": 0})
    value, mode = None, "constant"
    if ctx.type == "PadV2":
        value = ctx.inputs[2]
    elif ctx.type == "MirrorPad":
        tf_mode = ctx.attr("mode")
        if tf_mode != "REFLECT":
            raise ctx.fail(f"mode {tf_mode} is not supported (REFLECT is)")
        mode = "reflect"
    return ctx.emit("tensor.pad", [x, pads, value], {"mode": mode})


@converter("Squeeze")
def squeeze(ctx):
    dims = [int(d) for d in ctx.attr("squeeze_dims", [])]
    shape = ctx.in_shape(0)
    if not dims:  # every unit dim
        if shape is None or any(d is None for d in shape):
            return ctx.emit("tensor.squeeze", ctx.inputs[:1])
        dims = [i for i, d in enumerate(shape) if d == 1]
    rank = _rank(ctx)
    return ctx.emit("tensor.squeeze", [ctx.inputs[0], ctx.ints(sorted(d % rank for d in dims))])


@converter("ExpandDims")
def expand_dims(ctx):
    axis = int(np.asarray(ctx.need_const(1, "axis")).reshape(-1)[0]) % (_rank(ctx) + 1)
    return ctx.emit("tensor.unsqueeze", [ctx.inputs[0], ctx.ints([axis])])


@converter("Shape", "ShapeN")
def shape(ctx):
    dtype = ctx.out_dtype()
    results = []
    for i, x in enumerate(ctx.inputs):
        dims = ctx.in_shape(i)
        if _static(dims):
            results.append(ctx.constant(np.asarray(dims, dtype=dtype.numpy)))
        else:
            s = ctx.emit("tensor.shape", [x], {"start": 0})
            if dtype.numpy != np.int64:
                s = ctx.emit("elementwise.cast", [s], {"to": dtype, "saturate": 1, "round_mode": "up"})
            results.append(s)
    return results


@converter("Size")
def size(ctx):
    dims, dtype = ctx.in_shape(0), ctx.out_dtype()
    if _static(dims):
        return ctx.constant(np.asarray(int(np.prod(dims, dtype=np.int64)), dtype=dtype.numpy))
    s = ctx.emit("reduce.prod", [ctx.emit("tensor.shape", ctx.inputs[:1], {"start": 0}), ctx.ints([0])],
                 {"keepdims": 0, "noop_with_empty_axes": 0})
    return ctx.emit("elementwise.cast", [s], {"to": dtype, "saturate": 1, "round_mode": "up"})


@converter("Rank")
def rank(ctx):
    return ctx.constant(np.asarray(_rank(ctx), dtype=np.int32))


# -- slicing -------------------------------------------------------------------------------

def _bit(mask: int, i: int) -> bool:
    return bool((mask >> i) & 1)


@converter("StridedSlice")
def strided_slice(ctx):
    """numpy-style slicing: begin/end/strides per index, with five bit masks (bit i for index i):
    begin/end (ignore that bound), ellipsis (this index stands for every dim not indexed),
    new_axis (insert a unit dim here) and shrink_axis (take one element and drop the dim)."""
    x = ctx.inputs[0]
    begin, end, strides = (np.asarray(ctx.need_const(i, what)).reshape(-1).tolist()
                           for i, what in ((1, "begin"), (2, "end"), (3, "strides")))
    rank = _rank(ctx)
    m = {k: int(ctx.attr(f"{k}_mask", 0)) for k in ("begin", "end", "ellipsis", "new_axis", "shrink_axis")}
    n = len(begin)
    if bin(m["ellipsis"] & ((1 << n) - 1)).count("1") > 1:
        raise ctx.fail("has more than one ellipsis")
    # dims consumed by the indices that are neither an ellipsis nor a new axis
    consumed = sum(1 for i in range(n) if not _bit(m["ellipsis"], i) and not _bit(m["new_axis"], i))
    starts, ends, axes, steps, shrunk, new_axes = [], [], [], [], [], []
    dim = out = 0  # the input dim and the output position the next index refers to
    for i in range(n):
        if _bit(m["ellipsis"], i):
            dim += rank - consumed
            out += rank - consumed
            continue
        if _bit(m["new_axis"], i):
            new_axes.append(out)
            out += 1
            continue
        b, e, s = int(begin[i]), int(end[i]), int(strides[i])
        if s == 0:
            raise ctx.fail("has a zero stride")
        if _bit(m["shrink_axis"], i):
            starts.append(b), ends.append(INT64_MAX if b == -1 else b + 1), axes.append(dim), steps.append(1)
            shrunk.append(dim)
        else:
            if _bit(m["begin"], i):
                b = 0 if s > 0 else INT64_MAX
            if _bit(m["end"], i):
                e = INT64_MAX if s > 0 else INT64_MIN
            if (b, e, s) != (0, INT64_MAX, 1):  # the whole dim: nothing to slice
                starts.append(b), ends.append(e), axes.append(dim), steps.append(s)
            out += 1
        dim += 1
    if dim > rank:
        raise ctx.fail(f"indexes {dim} dims of a rank-{rank} tensor")
    y = x
    if axes:
        y = ctx.emit("tensor.slice", [y, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes), ctx.ints(steps)])
    if shrunk:
        y = ctx.emit("tensor.squeeze", [y, ctx.ints(shrunk)])
    if new_axes:
        y = ctx.emit("tensor.unsqueeze", [y, ctx.ints(new_axes)])
    if y is x:
        y = ctx.emit("tensor.identity", [x])
    return y


@converter("Slice")
def slice_(ctx):
    x, begin, size = ctx.inputs[:3]
    begin, size = ctx.int64(begin), ctx.int64(size)
    # size -1 means "to the end"
    ends = ctx.emit("elementwise.where", [
        ctx.emit("elementwise.equal", [size, ctx.ints(-1)]), ctx.ints(INT64_MAX),
        ctx.emit("elementwise.add", [begin, size])])
    return ctx.emit("tensor.slice", [x, begin, ends, ctx.ints(list(range(_rank(ctx)))), ctx.ints([1] * _rank(ctx))])


@converter("ReverseV2")
def reverse(ctx):
    rank = _rank(ctx)
    axes = sorted({int(a) % rank for a in np.asarray(ctx.need_const(1, "axis")).reshape(-1)})
    if not axes:
        return ctx.emit("tensor.identity", ctx.inputs[:1])
    k = len(axes)
    return ctx.emit("tensor.slice", [ctx.inputs[0], ctx.ints([-1] * k), ctx.ints([INT64_MIN] * k),
                                     ctx.ints(axes), ctx.ints([-1] * k)])


@converter("Pack")
def pack(ctx):
    axis = int(ctx.attr("axis", 0)) % len(ctx.out_shape())
    parts = [ctx.emit("tensor.unsqueeze", [v, ctx.ints([axis])]) for v in ctx.inputs]
    return parts[0] if len(parts) == 1 else ctx.emit("tensor.concat", parts, {"axis": axis})


@converter("Unpack")
def unpack(ctx):
    rank = _rank(ctx)
    axis, num = int(ctx.attr("axis", 0)) % rank, int(ctx.attr("num"))
    parts = ctx.emit("tensor.split", [ctx.inputs[0], ctx.ints([1] * num)], {"axis": axis}, num_outputs=num)
    parts = parts if isinstance(parts, list) else [parts]
    return [ctx.emit("tensor.squeeze", [p, ctx.ints([axis])]) for p in parts]


@converter("Split", "SplitV")
def split(ctx):
    if ctx.type == "Split":
        axis_index, x, num = 0, ctx.inputs[1], int(ctx.attr("num_split"))
        data_index = 1
    else:
        axis_index, x, num, data_index = 2, ctx.inputs[0], int(ctx.attr("num_split")), 0
    shape = ctx.in_shape(data_index)
    axis = int(ctx.need_const(axis_index, "axis")) % len(shape)
    if ctx.type == "Split":
        if shape[axis] is None:
            raise ctx.fail("needs a static size along the split axis")
        sizes = [shape[axis] // num] * num
    else:
        sizes = [int(s) for s in ctx.need_const(1, "size_splits")]
        if -1 in sizes:
            if shape[axis] is None:
                raise ctx.fail("needs a static size along the split axis")
            sizes[sizes.index(-1)] = shape[axis] - (sum(sizes) + 1)
    parts = ctx.emit("tensor.split", [x, ctx.ints(sizes)], {"axis": axis}, num_outputs=num)
    return parts if isinstance(parts, list) else [parts]


# -- gather, tile, fill, range -------------------------------------------------------------

@converter("GatherV2", "Gather")
def gather(ctx):
    params, indices = ctx.inputs[:2]
    axis = 0 if ctx.type == "Gather" else int(ctx.need_const(2, "axis"))
    if int(ctx.attr("batch_dims", 0)) != 0:
        raise ctx.fail("with batch_dims != 0 is not supported")
    return ctx.emit("tensor.gather", [params, indices], {"axis": axis % _rank(ctx)})


@converter("Tile")
def tile(ctx):
    return ctx.emit("tensor.tile", [ctx.inputs[0], ctx.int64(ctx.inputs[1])])


@converter("Fill")
def fill(ctx):
    dims, value = ctx.inputs[:2]
    return ctx.emit("tensor.expand", [value, ctx.int64(dims)])


@converter("BroadcastTo")
def broadcast_to(ctx):
    return ctx.emit("tensor.expand", [ctx.inputs[0], ctx.int64(ctx.inputs[1])])


@converter("ZerosLike", "OnesLike")
def zeros_like(ctx):
    x = ctx.inputs[0]
    fill_value = ctx.scalar(0 if ctx.type == "ZerosLike" else 1, x)
    shape = ctx.in_shape(0)
    if _static(shape):
        return ctx.constant(np.full(shape, fill_value.const, dtype=fill_value.const.dtype))
    return ctx.emit("tensor.expand", [fill_value, ctx.emit("tensor.shape", [x], {"start": 0})])


@converter("Range")
def range_(ctx):
    return ctx.emit("tensor.range", ctx.inputs[:3])


# -- space/depth ----------------------------------------------------------------------------

@converter("DepthToSpace", "SpaceToDepth")
def depth_to_space(ctx):
    fmt = ctx.attr("data_format", "NHWC")
    if fmt not in ("NHWC", "NCHW"):
        raise ctx.fail(f"data_format {fmt} is not supported")
    op = "tensor.depth_to_space" if ctx.type == "DepthToSpace" else "tensor.space_to_depth"
    attrs = {"blocksize": int(ctx.attr("block_size"))}
    if op == "tensor.depth_to_space":
        attrs["mode"] = "DCR"  # TF's channel order: block offset outer, channel inner
    x = ctx.inputs[0]
    if fmt == "NHWC":
        return ctx.transpose(ctx.emit(op, [ctx.transpose(x, to_first(4))], attrs), to_last(4))
    return ctx.emit(op, [x], attrs)


# -- space/batch (TF's atrous convolution: SpaceToBatchND → Conv2D → BatchToSpaceND) ---------

def _block_args(ctx, what: str):
    block = [int(b) for b in np.asarray(ctx.need_const(1, "block_shape")).reshape(-1)]
    pairs = np.asarray(ctx.need_const(2, what)).reshape(-1, 2).astype(np.int64)
    shape = ctx.in_shape(0)
    m = len(block)
    if shape is None or any(d is None for d in shape[1:1 + m]) or (len(shape) > 1 + m and shape[-1] is None):
        raise ctx.fail("needs static spatial and channel dims", hint="give input_shapes=...")
    return block, pairs, list(shape)


@converter("SpaceToBatchND")
def space_to_batch(ctx):
    """pad the M spatial dims, cut each into (dim/b, b), move the block offsets to the batch."""
    block, pads, shape = _block_args(ctx, "paddings")
    m, rest = len(block), shape[1 + len(block):]
    x = ctx.inputs[0]
    if pads.any():
        full = np.zeros((len(shape), 2), dtype=np.int64)
        full[1:1 + m] = pads
        x = ctx.emit("tensor.pad", [x, ctx.ints(full.T.reshape(-1)), None], {"mode": "constant"})
    padded = [shape[1 + i] + int(pads[i].sum()) for i in range(m)]
    split = [-1]
    for d, b in zip(padded, block):
        split += [d // b, b]
    x = reshape(ctx, x, ctx.ints(split + rest))
    # [N, d0/b0, b0, d1/b1, b1, ..., rest] → [b0, b1, ..., N, d0/b0, d1/b1, ..., rest]
    perm = [2 + 2 * i for i in range(m)] + [0] + [1 + 2 * i for i in range(m)] + \
        list(range(1 + 2 * m, 1 + 2 * m + len(rest)))
    x = ctx.transpose(x, perm)
    return reshape(ctx, x, ctx.ints([-1] + [d // b for d, b in zip(padded, block)] + rest))


@converter("BatchToSpaceND")
def batch_to_space(ctx):
    """The inverse: batch [b0·b1·…·N] → block offsets interleaved into the spatial dims, cropped."""
    block, crops, shape = _block_args(ctx, "crops")
    m, rest = len(block), shape[1 + len(block):]
    spatial = shape[1:1 + m]
    x = reshape(ctx, ctx.inputs[0], ctx.ints(block + [-1] + spatial + rest))
    # [b0, b1, ..., N, d0, d1, ..., rest] → [N, d0, b0, d1, b1, ..., rest]
    perm = [m]
    for i in range(m):
        perm += [m + 1 + i, i]
    perm += list(range(1 + 2 * m, 1 + 2 * m + len(rest)))
    x = ctx.transpose(x, perm)
    full = [d * b for d, b in zip(spatial, block)]
    x = reshape(ctx, x, ctx.ints([-1] + full + rest))
    if crops.any():
        x = ctx.emit("tensor.slice", [x, ctx.ints(crops[:, 0]), ctx.ints([d - int(c) for d, c in zip(full, crops[:, 1])]),
                                      ctx.ints(list(range(1, 1 + m))), ctx.ints([1] * m)])
    return x
