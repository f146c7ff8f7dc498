"""Shape and data-movement ATen ops (views, cat, slice, split...), tensor creation, and the
symbolic-size arithmetic torch.export records (``sym_size``, ``operator.mul`` on sizes).

Target shapes come from torch's own output shapes (``ctx.out_shape``): a dynamic dim equal to
the input's dim at the same place becomes 0 (reshape: copy) or 1 (expand: keep), a single other
dynamic dim becomes -1, so that reshape targets stay constants; only when that is not enough is
the shape computed at run time from the size arguments (int64 [1] values).
"""

from __future__ import annotations

import numpy as np

from qir.frontends.torch.importer import NO_OPS
from qir.frontends.torch.registry import aten, python_op
from qir.ir.types import DType

INT64_MAX = 2 ** 63 - 1


def _static(dims) -> bool:
    return all(isinstance(d, int) for d in dims)


# -- reshapes --------------------------------------------------------------------------------

def reshape_to(ctx, x_arg, sizes=None):
    """``x_arg`` reshaped to this node's output shape (``sizes``: the size arguments, for
    targets with several dynamic dims)."""
    x = ctx.value(x_arg)
    src, dst = ctx.meta_shape(x_arg), ctx.out_shape
    if src == dst:
        return x
    spec: list = []
    open_dims = []
    for i, d in enumerate(dst):
        if isinstance(d, int):
            spec.append(d)
        elif i < len(src) and src[i] == d:
            spec.append(0)  # copy the input's dim
        else:
            spec.append(None)
            open_dims.append(i)
    allowzero = 0
    if 0 in [d for d in dst if isinstance(d, int)]:
        if any(s == 0 and not isinstance(d, int) for s, d in zip(spec, dst)):
            raise ctx.fail("reshape of an empty tensor with dynamic dims is not supported")
        allowzero = 1
    if len(open_dims) == 1:
        spec[open_dims[0]] = -1
    elif open_dims:
        if sizes is None or len(sizes) != len(dst):
            raise ctx.fail("reshape to several dynamic dims needs its size arguments")
        for i in open_dims:
            spec[i] = ctx.size(sizes[i])
    return ctx.emit("tensor.reshape", [x, ctx.shape_value(spec)], {"allowzero": allowzero})


@aten("view", "_unsafe_view", "reshape", "view_copy")
def view(ctx):
    return reshape_to(ctx, ctx.args["self"], ctx.args["size"])


@aten("flatten", "unflatten")
def flatten(ctx):
    return reshape_to(ctx, ctx.args["self"])


@aten("expand", "expand_copy")
def expand(ctx):
    x_arg = ctx.args["self"]
    src, dst = ctx.meta_shape(x_arg), ctx.out_shape
    x = ctx.value(x_arg)
    if src == dst:
        return x
    offset = len(dst) - len(src)
    spec: list = []
    for i, d in enumerate(dst):
        j = i - offset
        if isinstance(d, int):
            spec.append(d)
        elif j >= 0 and src[j] == d:
            spec.append(1)  # broadcasting keeps the input's dim
        else:
            spec.append(ctx.size(ctx.args["size"][i]))
    return ctx.emit("tensor.expand", [x, ctx.shape_value(spec)])


@aten("expand_as")
def expand_as(ctx):
    return ctx.emit("tensor.expand", [ctx.value(ctx.args["self"]),
                                      ctx.emit("tensor.shape", [ctx.value(ctx.args["other"])])])


@aten("permute", "permute_copy")
def permute(ctx):
    rank = ctx.rank(ctx.args["self"])
    perm = [ctx.axis(d, rank) for d in ctx.args["dims"]]
    x = ctx.value(ctx.args["self"])
    return x if perm == list(range(rank)) else ctx.emit("tensor.transpose", [x], {"perm": tuple(perm)})


@aten("transpose", "transpose_copy")
def transpose(ctx):
    rank = ctx.rank(ctx.args["self"])
    perm = list(range(rank))
    a, b = ctx.axis(ctx.args["dim0"], rank), ctx.axis(ctx.args["dim1"], rank)
    perm[a], perm[b] = perm[b], perm[a]
    x = ctx.value(ctx.args["self"])
    return x if a == b else ctx.emit("tensor.transpose", [x], {"perm": tuple(perm)})


@aten("t")
def t(ctx):
    x = ctx.value(ctx.args["self"])
    return x if ctx.rank(ctx.args["self"]) < 2 else ctx.emit("tensor.transpose", [x], {"perm": (1, 0)})


@aten("squeeze", "squeeze_copy")
def squeeze(ctx):
    shape = ctx.meta_shape(ctx.args["self"])
    dims = ctx.args.get("dim")
    dims = range(len(shape)) if dims is None else ([dims] if isinstance(dims, int) else dims)
    # torch leaves a dim that is not 1 alone; ONNX Squeeze would fail on it.
    axes = sorted({ctx.axis(d, len(shape)) for d in dims if shape[ctx.axis(d, len(shape))] == 1}) \
        if shape else []
    x = ctx.value(ctx.args["self"])
    return ctx.emit("tensor.squeeze", [x, ctx.ints(axes)]) if axes else x


@aten("unsqueeze", "unsqueeze_copy")
def unsqueeze(ctx):
    axis = ctx.axis(ctx.args["dim"], ctx.rank(ctx.args["self"]) + 1)
    return ctx.emit("tensor.unsqueeze", [ctx.value(ctx.args["self"]), ctx.ints([axis])])


# -- joining and cutting ---------------------------------------------------------------------

@aten("cat", "concat")
def cat(ctx):
    rank = len(ctx.out_shape)
    values = [ctx.value(t, ctx.out_dtype) for t in ctx.args["tensors"]]
    return ctx.emit("tensor.concat", values, {"axis": ctx.axis(ctx.args["dim"], rank)})


@aten("stack")
def stack(ctx):
    rank = len(ctx.out_shape)
    axis = ctx.axis(ctx.args["dim"], rank)
    values = [ctx.emit("tensor.unsqueeze", [ctx.value(t, ctx.out_dtype), ctx.ints([axis])])
              for t in ctx.args["tensors"]]
    return ctx.emit("tensor.concat", values, {"axis": axis})


def _bound(ctx, v, default: int):
    return default if v is None else ctx.size(v)


@aten("slice", "slice_copy")
def slice_(ctx):
    x_arg = ctx.args["self"]
    shape = ctx.meta_shape(x_arg)
    axis = ctx.axis(ctx.args["dim"], len(shape))
    start = _bound(ctx, ctx.args.get("start"), 0)
    end = _bound(ctx, ctx.args.get("end"), INT64_MAX)
    step = int(ctx.args.get("step") or 1)
    x = ctx.value(x_arg)
    full = isinstance(end, int) and (end >= INT64_MAX // 2 or (isinstance(shape[axis], int) and end >= shape[axis]))
    if start == 0 and full and step == 1:
        return x
    return ctx.emit("tensor.slice", [x, ctx.shape_value([start]), ctx.shape_value([end]),
                                     ctx.ints([axis]), ctx.ints([step])])


@aten("select", "select_copy")
def select(ctx):
    axis = ctx.axis(ctx.args["dim"], ctx.rank(ctx.args["self"]))
    index = ctx.size(ctx.args["index"])
    x = ctx.value(ctx.args["self"])
    if isinstance(index, int):
        return ctx.emit("tensor.gather", [x, ctx.const(np.asarray(index, dtype=np.int64))], {"axis": axis})
    picked = ctx.emit("tensor.gather", [x, index], {"axis": axis})
    return ctx.emit("tensor.squeeze", [picked, ctx.ints([axis])])


@aten("split", "split_with_sizes", "chunk", "tensor_split", "split_copy", "split_with_sizes_copy")
def split(ctx):
    rank = ctx.rank(ctx.args["self"])
    axis = ctx.axis(ctx.args.get("dim") or 0, rank)
    sizes = [m.shape[axis] for m in ctx.meta]
    if not _static(sizes):
        raise ctx.fail("splitting a dynamic dim is not supported")
    x = ctx.value(ctx.args["self"])
    if len(sizes) == 1:
        return [x]
    return ctx.emit_multi("tensor.split", [x, ctx.ints(sizes)], {"axis": axis}, len(sizes))


@aten("unbind", "unbind_copy")
def unbind(ctx):
    rank = ctx.rank(ctx.args["self"])
    axis = ctx.axis(ctx.args.get("dim") or 0, rank)
    n = len(ctx.meta)
    x = ctx.value(ctx.args["self"])
    parts = [x] if n == 1 else ctx.emit_multi("tensor.split", [x, ctx.ints([1] * n)], {"axis": axis}, n)
    return [ctx.emit("tensor.squeeze", [p, ctx.ints([axis])]) for p in parts]


@python_op("getitem")
def getitem(ctx):
    items = ctx.importer.env[ctx.args["a"]]
    item = items[ctx.args["b"]]
    if item is None:
        raise ctx.fail(f"output {ctx.args['b']} of {ctx.args['a'].name} is not supported (only the values "
                       f"output is)")
    return item


@aten("index_select")
def index_select(ctx):
    axis = ctx.axis(ctx.args["dim"], ctx.rank(ctx.args["self"]))
    return ctx.emit("tensor.gather", [ctx.value(ctx.args["self"]), ctx.value(ctx.args["index"])], {"axis": axis})


@aten("gather")
def gather(ctx):
    axis = ctx.axis(ctx.args["dim"], ctx.rank(ctx.args["self"]))
    return ctx.emit("tensor.gather_elements", [ctx.value(ctx.args["self"]), ctx.value(ctx.args["index"])],
                    {"axis": axis})


@aten("index")
def index(ctx):
    """``x[..., idx]`` with one index tensor (the others None): a gather along its dim."""
    indices = list(ctx.args["indices"])
    used = [i for i, v in enumerate(indices) if v is not None]
    if len(used) != 1:
        raise ctx.fail("advanced indexing with more than one index tensor is not supported")
    idx = ctx.value(indices[used[0]])
    if idx.type.dtype == DType.BOOL:
        raise ctx.fail("boolean mask indexing (data-dependent shape) is not supported")
    return ctx.emit("tensor.gather", [ctx.value(ctx.args["self"]), idx], {"axis": used[0]})


@aten("repeat")
def repeat(ctx):
    repeats = [int(r) for r in ctx.args["repeats"]]
    rank = ctx.rank(ctx.args["self"])
    x = ctx.value(ctx.args["self"])
    if len(repeats) > rank:
        x = ctx.emit("tensor.unsqueeze", [x, ctx.ints(range(len(repeats) - rank))])
    return ctx.emit("tensor.tile", [x, ctx.ints(repeats)])


@aten("constant_pad_nd")
def constant_pad_nd(ctx):
    rank = ctx.rank(ctx.args["self"])
    pad = [int(p) for p in ctx.args["pad"]]
    begins, ends = [0] * rank, [0] * rank
    for k in range(len(pad) // 2):  # pairs from the last dim backwards
        begins[rank - 1 - k], ends[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
    x = ctx.value(ctx.args["self"])
    return ctx.emit("tensor.pad", [x, ctx.ints(begins + ends), ctx.value(ctx.args.get("value") or 0)])


@aten("roll")
def roll(ctx):
    """Each (shift, dim): the last ``shift`` entries moved to the front (slices + concat)."""
    shape = ctx.meta_shape(ctx.args["self"])
    shifts, dims = list(ctx.args["shifts"]), list(ctx.args.get("dims") or [])
    x = ctx.value(ctx.args["self"])
    if not dims:  # over the flattened tensor
        if not all(isinstance(d, int) for d in shape):
            raise ctx.fail("roll without dims over dynamic dims is not supported")
        flat = ctx.emit("tensor.reshape", [x, ctx.ints([-1])])
        rolled = _roll_axis(ctx, flat, int(shifts[0]), 0, int(np.prod(shape)))
        return ctx.emit("tensor.reshape", [rolled, ctx.ints(shape)])
    for shift, dim in zip(shifts, dims):
        axis = ctx.axis(int(dim), len(shape))
        if not isinstance(shape[axis], int):
            raise ctx.fail("roll along a dynamic dim is not supported")
        x = _roll_axis(ctx, x, int(shift), axis, shape[axis])
    return x


def _roll_axis(ctx, x, shift: int, axis: int, n: int):
    s = shift % n if n else 0
    if s == 0:
        return x
    tail = ctx.emit("tensor.slice", [x, ctx.ints([n - s]), ctx.ints([n]), ctx.ints([axis])])
    head = ctx.emit("tensor.slice", [x, ctx.ints([0]), ctx.ints([n - s]), ctx.ints([axis])])
    return ctx.emit("tensor.concat", [tail, head], {"axis": axis})


@aten("flip")
def flip(ctx):
    rank = ctx.rank(ctx.args["self"])
    axes = [ctx.axis(d, rank) for d in ctx.args["dims"]]
    n = len(axes)
    return ctx.emit("tensor.slice", [ctx.value(ctx.args["self"]), ctx.ints([-1] * n), ctx.ints([-INT64_MAX - 1] * n),
                                     ctx.ints(axes), ctx.ints([-1] * n)])


@aten("tril", "triu")
def trilu(ctx):
    upper = int(ctx.op.endswith("triu"))
    k = ctx.const(np.asarray(int(ctx.args.get("diagonal") or 0), dtype=np.int64))
    return ctx.emit("tensor.trilu", [ctx.value(ctx.args["self"]), k], {"upper": upper})


# -- creation --------------------------------------------------------------------------------

def _fill(ctx, fill, sizes=None, like=None):
    if hasattr(fill, "meta"):
        raise ctx.fail("a fill value computed from sizes is not supported")
    dt = ctx.out_dtype
    shape = ctx.out_shape
    if _static(shape):
        return ctx.const(np.full(shape, fill, dtype=dt.numpy))
    if like is not None:
        shape_v = ctx.emit("tensor.shape", [ctx.value(like)])
    else:
        shape_v = ctx.shape_value([ctx.size(s) for s in sizes])
    return ctx.emit("tensor.constant_of_shape", [shape_v], {"value": np.asarray([fill], dtype=dt.numpy)})


@aten("full")
def full(ctx):
    return _fill(ctx, ctx.args["fill_value"], sizes=ctx.args["size"])


@aten("zeros", "empty", "empty_strided", "new_zeros", "new_empty", "new_empty_strided")
def zeros(ctx):
    return _fill(ctx, 0, sizes=ctx.args["size"])


@aten("ones", "new_ones")
def ones(ctx):
    return _fill(ctx, 1, sizes=ctx.args["size"])


@aten("new_full")
def new_full(ctx):
    return _fill(ctx, ctx.args["fill_value"], sizes=ctx.args["size"])


@aten("full_like")
def full_like(ctx):
    return _fill(ctx, ctx.args["fill_value"], like=ctx.args["self"])


@aten("zeros_like", "empty_like")
def zeros_like(ctx):
    return _fill(ctx, 0, like=ctx.args["self"])


@aten("ones_like")
def ones_like(ctx):
    return _fill(ctx, 1, like=ctx.args["self"])


@aten("scalar_tensor")
def scalar_tensor(ctx):
    return _fill(ctx, ctx.args["s"], sizes=[])


@aten("arange")
def arange(ctx):
    a = ctx.args
    start, end, step = (a.get("start", 0), a["end"], a.get("step", 1)) if "start" in a else (0, a["end"], 1)
    dt = ctx.out_dtype
    if not any(hasattr(v, "meta") for v in (start, end, step)):
        n = len(ctx.out_shape) and ctx.out_shape[0]
        return ctx.const((np.asarray(start, np.float64) + np.arange(n) * np.asarray(step, np.float64)).astype(dt.numpy)
                         if dt.is_float else np.arange(start, end, step, dtype=dt.numpy))

    def scalar(v):
        if hasattr(v, "meta"):
            v = ctx.emit("tensor.squeeze", [ctx.size(v), ctx.ints([0])])
            return ctx.value(v, dt)
        return ctx.const(np.asarray(v, dtype=dt.numpy))

    return ctx.emit("tensor.range", [scalar(start), scalar(end), scalar(step)])


# -- symbolic sizes (int64 [1] values, converted only when a converter needs one) -----------

@aten("sym_size")
def sym_size(ctx):
    rank = ctx.rank(ctx.args["self"])
    d = ctx.axis(ctx.args["dim"], rank)
    return ctx.emit("tensor.shape", [ctx.value(ctx.args["self"])], {"start": d, "end": d + 1})


@aten("sym_numel", "numel")
def sym_numel(ctx):
    n = ctx.emit("tensor.size", [ctx.value(ctx.args["self"])])
    return ctx.emit("tensor.reshape", [n, ctx.ints([1])])


def _sym_operand(ctx, v):
    return ctx.size(v) if hasattr(v, "meta") else ctx.ints([int(v)])


def _sym_binary(qir_op: str):
    def convert(ctx):
        return ctx.emit(qir_op, [_sym_operand(ctx, ctx.args["a"]), _sym_operand(ctx, ctx.args["b"])])
    return convert


for _name, _op in (("mul", "elementwise.mul"), ("add", "elementwise.add"), ("sub", "elementwise.sub"),
                   ("floordiv", "elementwise.div")):  # sizes are non-negative: trunc = floor
    python_op(_name)(_sym_binary(_op))


@aten(*NO_OPS)
def no_op(ctx):
    """Trace-time checks: nothing to compute."""
    return None
