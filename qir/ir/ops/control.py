"""Control flow, sequence and optional ops: If, Loop, Scan, Sequence*, Optional*.

Bodies and branches are qir Graphs held in ``graph`` attributes; they may read Values of the
enclosing graphs (the interpreter binds those). Kernels get ``run_graph(graph, args) -> list``.
At run time a sequence is a Python list of arrays and an empty optional is None; a present
optional is its element itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qir.errors import ExecutionError
from qir.ir.opdef import Attr, InferContext, op
from qir.ir.ops.infer import normalize_axis
from qir.ir.types import DType, OptionalType, SequenceType, TensorType, Type

UNKNOWN_DIM = "?"


# -- type helpers -----------------------------------------------------------------------------

def merge_types(a: Type | None, b: Type | None) -> Type | None:
    """The most precise type both ``a`` and ``b`` agree with (dims that differ become unknown)."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype != b.dtype:
            return a  # a malformed model; the verifier of each branch reports it
        if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
            return TensorType(a.dtype, None)
        return TensorType(a.dtype, tuple(x if x == y else UNKNOWN_DIM for x, y in zip(a.shape, b.shape)))
    if isinstance(a, SequenceType) and isinstance(b, SequenceType):
        return SequenceType(merge_types(a.elem, b.elem))
    if isinstance(a, OptionalType) and isinstance(b, OptionalType):
        return OptionalType(merge_types(a.elem, b.elem))
    return a


def _plain(t: Type | None) -> Type | None:
    """``t`` without quantization parameters (a tensor's value type)."""
    return TensorType(t.dtype, t.shape) if isinstance(t, TensorType) else t


def _stacked(t: Type | None, count: int | str = UNKNOWN_DIM, axis: int = 0) -> Type | None:
    """The type of per-iteration values of type ``t`` stacked along a new ``axis``."""
    if not isinstance(t, TensorType):
        return t
    if t.shape is None:
        return TensorType(t.dtype, None)
    shape = list(t.shape)
    shape.insert(axis % (len(shape) + 1), count)
    return TensorType(t.dtype, tuple(shape))


def _seq_elem(ctx: InferContext, i: int) -> Type:
    t = ctx.input_types[i]
    return t.elem if isinstance(t, SequenceType) else TensorType(DType.FLOAT32, None)


# -- If ---------------------------------------------------------------------------------------

def _infer_if(ctx: InferContext) -> list[Type]:
    then_out = [v.type for v in ctx.attrs["then_branch"].outputs]
    else_out = [v.type for v in ctx.attrs["else_branch"].outputs]
    if len(then_out) != len(else_out):
        raise ctx.fail(f"then_branch has {len(then_out)} outputs but else_branch has {len(else_out)}")
    return [_plain(merge_types(a, b)) for a, b in zip(then_out, else_out)]


@op("control.if", inputs=["cond"], outputs=["outputs*"],
    attrs={"then_branch": Attr("graph", doc="run when cond is true"),
           "else_branch": Attr("graph", doc="run when cond is false")},
    infer=_infer_if, needs_runner=True)
def if_(cond, *, then_branch, else_branch, run_graph):
    """Run one branch (no inputs; it reads outer values) and return its outputs."""
    branch = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
    return tuple(run_graph(branch, []))


# -- Loop -------------------------------------------------------------------------------------

def _infer_loop(ctx: InferContext) -> list[Type]:
    body = ctx.attrs["body"]
    n_carried = max(len(ctx) - 2, 0)
    outs = body.outputs[1:]
    if len(body.inputs) != n_carried + 2 or len(outs) < n_carried:
        raise ctx.fail(f"the body takes {len(body.inputs)} inputs and returns {len(body.outputs)} "
                       f"outputs, but the loop carries {n_carried} values (body inputs must be "
                       f"(iteration_num, cond, carried...), outputs (cond, carried..., scans...))")
    types = []
    for i in range(n_carried):
        given, yielded = ctx.input_types[2 + i], outs[i].type
        # ONNX types a carried output by what the body yields (LoopInferenceFunction): an
        # optional<seq> fed in and a seq yielded (loop16_seq_none) makes a seq. Only values of
        # the same kind merge; a kind change keeps the body's type.
        same_kind = given is not None and yielded is not None and type(given) is type(yielded)
        types.append(_plain(merge_types(given, yielded) if same_kind else yielded or given))
    # A carried value may change shape from one iteration to the next: keep only what agrees.
    types = [merge_types(t, _plain(body.inputs[2 + i].type)) if isinstance(t, TensorType) else t
             for i, t in enumerate(types)]
    types += [_stacked(_plain(v.type)) for v in outs[n_carried:]]
    return types


def _stack(values: list, elem_type: Type | None) -> Any:
    """Scan outputs of a loop: per-iteration tensors stacked on a new leading axis."""
    if values:
        return np.stack([np.asarray(v) for v in values])
    if isinstance(elem_type, TensorType):
        tail = tuple(d if isinstance(d, int) else 0 for d in (elem_type.shape or ()))
        return np.zeros((0, *tail), dtype=elem_type.dtype.numpy)
    return np.zeros((0,), dtype=np.float32)


@op("control.loop", inputs=["M?", "cond?", "v_initial*"], outputs=["v_final_and_scan_outputs*"],
    attrs={"body": Attr("graph", doc="(iteration_num, cond, carried...) -> (cond, carried..., scans...)")},
    infer=_infer_loop, needs_runner=True)
def loop(M=None, cond=None, *v_initial, body, run_graph):
    """Run ``body`` while iteration < M (if given) and cond (if given) hold.

    Carried values flow from one iteration to the next; scan outputs are stacked.
    """
    trip = None if M is None else int(np.asarray(M).reshape(-1)[0])
    keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    carried = list(v_initial)
    n_scans = len(body.outputs) - 1 - len(carried)
    scans: list[list] = [[] for _ in range(n_scans)]
    i = 0
    while keep_going and (trip is None or i < trip):
        outs = run_graph(body, [np.array(i, dtype=np.int64), np.array(keep_going), *carried])
        keep_going = bool(np.asarray(outs[0]).reshape(-1)[0])
        carried = list(outs[1:1 + len(carried)])
        for k, value in enumerate(outs[1 + len(carried):]):
            scans[k].append(value)
        i += 1
    elem_types = [v.type for v in body.outputs[1 + len(carried):]]
    return tuple(carried) + tuple(_stack(s, t) for s, t in zip(scans, elem_types))


# -- Scan -------------------------------------------------------------------------------------

def _scan_layout(n_inputs: int, n_body_outputs: int, attrs: dict) -> tuple[int, int, list, list, list, list]:
    """(states, scan outputs, input axes, input directions, output axes, output directions)."""
    m = attrs["num_scan_inputs"]
    n = n_inputs - m
    k = n_body_outputs - n

    def pad(values, count):
        values = list(values)
        return values + [0] * (count - len(values))

    return (n, k, pad(attrs["scan_input_axes"], m), pad(attrs["scan_input_directions"], m),
            pad(attrs["scan_output_axes"], k), pad(attrs["scan_output_directions"], k))


def _infer_scan(ctx: InferContext) -> list[Type]:
    body = ctx.attrs["body"]
    n, k, in_axes, _, out_axes, _ = _scan_layout(len(ctx), len(body.outputs), ctx.attrs)
    if len(body.inputs) != len(ctx) or k < 0:
        raise ctx.fail(f"the body takes {len(body.inputs)} inputs and returns {len(body.outputs)} "
                       f"outputs for {len(ctx)} scan inputs/states")
    length: int | str = UNKNOWN_DIM
    if ctx.attrs["num_scan_inputs"] > 0:
        first = ctx.shape(n)
        if first is not None:
            length = first[normalize_axis(in_axes[0], len(first))]
    types = [_plain(merge_types(ctx.input_types[i], body.outputs[i].type)) for i in range(n)]
    for j in range(k):
        elem = _plain(body.outputs[n + j].type)
        rank = elem.rank if isinstance(elem, TensorType) else None
        axis = out_axes[j] if rank is None or out_axes[j] >= 0 else out_axes[j] + rank + 1
        types.append(_stacked(elem, length, axis))
    return types


@op("control.scan", inputs=["initial_state_and_scan_inputs*"], outputs=["final_state_and_scan_outputs*"],
    attrs={"body": Attr("graph", doc="(states..., scan elements...) -> (states..., scan elements...)"),
           "num_scan_inputs": Attr("int", doc="how many of the inputs (the last ones) are scanned"),
           "scan_input_axes": Attr("ints", (), doc="axis scanned per scan input (empty: all 0)"),
           "scan_input_directions": Attr("ints", (), doc="0 forward, 1 reverse (empty: all 0)"),
           "scan_output_axes": Attr("ints", (), doc="axis each scan output is stacked on (empty: 0)"),
           "scan_output_directions": Attr("ints", (), doc="0 append, 1 prepend (empty: all 0)")},
    infer=_infer_scan, needs_runner=True)
def scan(*inputs, body, num_scan_inputs, scan_input_axes, scan_input_directions, scan_output_axes,
         scan_output_directions, run_graph):
    """Iterate ``body`` over slices of the scan inputs, threading the state values through."""
    attrs = dict(num_scan_inputs=num_scan_inputs, scan_input_axes=scan_input_axes,
                 scan_input_directions=scan_input_directions, scan_output_axes=scan_output_axes,
                 scan_output_directions=scan_output_directions)
    n, k, in_axes, in_dirs, out_axes, out_dirs = _scan_layout(len(inputs), len(body.outputs), attrs)
    states = list(inputs[:n])
    xs = [np.asarray(x) for x in inputs[n:]]
    in_axes = [normalize_axis(a, x.ndim) for a, x in zip(in_axes, xs)]
    lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
    if len(lengths) > 1:
        raise ExecutionError(f"scan inputs have different lengths along their scan axes: {sorted(lengths)}")
    length = lengths.pop() if lengths else 0
    per_step: list[list] = [[] for _ in range(k)]
    for t in range(length):
        slices = [np.take(x, length - 1 - t if d else t, axis=a) for x, a, d in zip(xs, in_axes, in_dirs)]
        outs = run_graph(body, [*states, *slices])
        states = list(outs[:n])
        for j in range(k):
            per_step[j].append(np.asarray(outs[n + j]))
    results = []
    for j in range(k):
        steps = per_step[j][::-1] if out_dirs[j] else per_step[j]
        if steps:
            axis = normalize_axis(out_axes[j], steps[0].ndim + 1)
            results.append(np.stack(steps, axis=axis))
        else:
            results.append(_stack([], body.outputs[n + j].type))
    return tuple(states) + tuple(results)


# -- sequences --------------------------------------------------------------------------------

def _position(position, length: int, insert: bool = False) -> int:
    """A non-negative position in a sequence of ``length`` (an insert position may equal length)."""
    pos = int(np.asarray(position).reshape(-1)[0])
    high = length if insert else length - 1
    if not -length <= pos <= high:
        raise ExecutionError(f"sequence position {pos} is out of range for a sequence of {length}")
    return pos + length if pos < 0 else pos


def _infer_construct(ctx: InferContext) -> list[Type]:
    elem = None
    for i in range(len(ctx)):
        elem = merge_types(elem, _plain(ctx.input_types[i]))
    return [SequenceType(elem or TensorType(DType.FLOAT32, None))]


@op("control.sequence_construct", inputs=["inputs*"], outputs=["output_sequence"],
    infer=_infer_construct)
def sequence_construct(*inputs):
    """A sequence holding the input tensors, in order."""
    return [np.asarray(x) for x in inputs]


@op("control.sequence_empty", inputs=[], outputs=["output"],
    attrs={"dtype": Attr("dtype", DType.FLOAT32, doc="element type of the (empty) sequence")},
    infer=lambda ctx: [SequenceType(TensorType(ctx.attrs["dtype"], None))])
def sequence_empty(*, dtype):
    """An empty sequence."""
    return []


def _infer_insert(ctx: InferContext) -> list[Type]:
    return [SequenceType(merge_types(_seq_elem(ctx, 0), _plain(ctx.input_types[1])))]


@op("control.sequence_insert", inputs=["input_sequence", "tensor", "position?"],
    outputs=["output_sequence"], infer=_infer_insert)
def sequence_insert(input_sequence, tensor, position=None):
    """A new sequence with ``tensor`` inserted at ``position`` (default: at the end)."""
    out = list(input_sequence)
    pos = len(out) if position is None else _position(position, len(out), insert=True)
    out.insert(pos, tensor)
    return out


@op("control.sequence_at", inputs=["input_sequence", "position"], outputs=["tensor"],
    infer=lambda ctx: [_plain(_seq_elem(ctx, 0))])
def sequence_at(input_sequence, position):
    """The tensor at ``position`` (negative counts from the end)."""
    return input_sequence[_position(position, len(input_sequence))]


@op("control.sequence_erase", inputs=["input_sequence", "position?"], outputs=["output_sequence"],
    infer=lambda ctx: [SequenceType(_plain(_seq_elem(ctx, 0)))])
def sequence_erase(input_sequence, position=None):
    """A new sequence without the tensor at ``position`` (default: the last one)."""
    out = list(input_sequence)
    del out[len(out) - 1 if position is None else _position(position, len(out))]
    return out


@op("control.sequence_length", inputs=["input_sequence"], outputs=["length"],
    infer=lambda ctx: [TensorType(DType.INT64, ())])
def sequence_length(input_sequence):
    """The number of tensors in the sequence, as an int64 scalar."""
    return np.array(len(input_sequence), dtype=np.int64)


def _split_sizes(length: int, split) -> list[int]:
    """Chunk sizes along the split axis: one per element, equal chunks or explicit sizes."""
    if split is None:
        return [1] * length
    split = np.asarray(split)
    if split.ndim == 0:
        size = int(split)
        return [size] * (length // size) + ([length % size] if length % size else [])
    return [int(s) for s in split]


def _infer_split_to_sequence(ctx: InferContext) -> list[Type]:
    t = ctx.type(0)
    shape = None
    if t.shape is not None:
        axis = normalize_axis(ctx.attrs["axis"], len(t.shape))
        dims = list(t.shape)
        if not ctx.has(1) and not ctx.attrs["keepdims"]:
            del dims[axis]
        elif not ctx.has(1):
            dims[axis] = 1
        else:
            dims[axis] = UNKNOWN_DIM
        shape = tuple(dims)
    return [SequenceType(TensorType(t.dtype, shape))]


@op("control.split_to_sequence", inputs=["input", "split?"], outputs=["output_sequence"],
    attrs={"axis": Attr("int", 0), "keepdims": Attr("int", 1, doc="keep the split axis when split is absent")},
    infer=_infer_split_to_sequence)
def split_to_sequence(input, split=None, *, axis, keepdims):
    """Split ``input`` along ``axis`` into a sequence (size-1 chunks when split is absent)."""
    axis = normalize_axis(axis, input.ndim)
    sizes = _split_sizes(input.shape[axis], split)
    bounds = np.cumsum(sizes)[:-1]
    parts = np.split(input, bounds, axis=axis)
    if split is None and not keepdims:
        parts = [np.squeeze(p, axis=axis) for p in parts]
    return [np.ascontiguousarray(p) for p in parts]


def _infer_concat_from_sequence(ctx: InferContext) -> list[Type]:
    elem = _seq_elem(ctx, 0)
    shape = None
    if isinstance(elem, TensorType) and elem.shape is not None:
        dims = list(elem.shape)
        if ctx.attrs["new_axis"]:
            dims.insert(normalize_axis(ctx.attrs["axis"], len(dims) + 1), UNKNOWN_DIM)
        else:
            dims[normalize_axis(ctx.attrs["axis"], len(dims))] = UNKNOWN_DIM
        shape = tuple(dims)
    return [TensorType(elem.dtype, shape)]


@op("control.concat_from_sequence", inputs=["input_sequence"], outputs=["concat_result"],
    attrs={"axis": Attr("int"), "new_axis": Attr("int", 0, doc="1: stack on a new axis")},
    infer=_infer_concat_from_sequence)
def concat_from_sequence(input_sequence, *, axis, new_axis):
    """Concatenate (or, with new_axis, stack) the tensors of a sequence."""
    if new_axis:
        return np.stack(input_sequence, axis=normalize_axis(axis, input_sequence[0].ndim + 1))
    return np.concatenate(input_sequence, axis=normalize_axis(axis, input_sequence[0].ndim))


def _infer_sequence_map(ctx: InferContext) -> list[Type]:
    return [SequenceType(_plain(v.type) or TensorType(DType.FLOAT32, None)) for v in ctx.attrs["body"].outputs]


@op("control.sequence_map", inputs=["input_sequence", "additional_inputs*"], outputs=["out_sequence*"],
    attrs={"body": Attr("graph", doc="applied to each element (sequence inputs are indexed, tensors passed whole)")},
    infer=_infer_sequence_map, needs_runner=True)
def sequence_map(input_sequence, *additional_inputs, body, run_graph):
    """Apply ``body`` to the i-th element of every sequence input (tensor inputs as they are)."""
    results: list[list] = [[] for _ in body.outputs]
    for i in range(len(input_sequence)):
        args = [input_sequence[i]] + [a[i] if isinstance(a, list) else a for a in additional_inputs]
        for out, value in zip(results, run_graph(body, args)):
            out.append(value)
    return tuple(results)


# -- optionals --------------------------------------------------------------------------------

def _infer_optional(ctx: InferContext) -> list[Type]:
    if ctx.has(0):
        return [OptionalType(_plain(ctx.type(0)))]
    if ctx.attrs["type"] is None:
        raise ctx.fail("an Optional without input needs its 'type' attribute")
    return [OptionalType(ctx.attrs["type"])]


@op("control.optional", inputs=["input?"], outputs=["output"],
    attrs={"type": Attr("type", None, doc="element type (needed when there is no input)")},
    infer=_infer_optional)
def optional(input=None, *, type):
    """An optional holding ``input``, or an empty one."""
    return input


@op("control.optional_has_element", inputs=["input?"], outputs=["output"],
    infer=lambda ctx: [TensorType(DType.BOOL, ())])
def optional_has_element(input=None):
    """True when the optional (or plain tensor/sequence) input holds a value."""
    return np.array(input is not None)


def _infer_get_element(ctx: InferContext) -> list[Type]:
    t = ctx.type(0)
    return [_plain(t.elem if isinstance(t, OptionalType) else t)]


@op("control.optional_get_element", inputs=["input"], outputs=["output"], infer=_infer_get_element)
def optional_get_element(input):
    """The element of a non-empty optional (a plain tensor/sequence passes through)."""
    if input is None:
        raise ExecutionError("OptionalGetElement on an empty optional")
    return input
