"""The static memory planner shared by all targets: liveness, in-place reuse and arena offsets.

    plan = plan_memory(graph, dims={"N": 1})
    plan.buffers["conv1_0"].offset, plan.arena_size, plan.peak_live_bytes

What is planned: every tensor a node of the top-level graph produces (graph outputs included;
they stay live to the end, the runtime copies them out). Graph inputs (the caller's buffers) and
constants (weights) are not in the arena; values inside If/Loop/Scan bodies belong to the
control-flow kernel that runs them.

Liveness follows the node order: a value is live from the step that produces it to the last step
that reads it, where a value captured by a node's subgraph counts as read by that node. A value
nothing reads is still live at its own step (the kernel writes it).

In-place: an elementwise unary or binary op (``IN_PLACE_OPS``) may write its output over an input
that dies at that node and has the output's dtype and shape; the two then form one buffer.

Placement: buffers are placed greedily by size (largest first), each at the best-fitting gap
(the smallest one large enough) among the buffers already placed whose lifetimes overlap it, in
one arena, at offsets that are multiples of ``alignment``. This is the offline "greedy by size"
strategy TFLite's arena planner uses; it is O(n²) in the worst case with numpy doing the inner loop.

Sizes must be static: symbolic dims are resolved from ``dims``; a value whose size is still not
known (unknown rank, an unbound or data-dependent dim, strings, sequences) is reported in
``MemoryPlan.unplannable`` with the reason and left to dynamic allocation.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs
import numpy as np

from qir.errors import QirError
from qir.ir.graph import Graph, Node, Value
from qir.ir.opdef import call_kernel, conform, get_op
from qir.ir.types import DType, TensorType

#: Ops whose output element i depends only on input element i (after broadcasting), so that
#: the output may overwrite an input of the same shape. Targets may add their own ops.
IN_PLACE_OPS: set[str] = {
    *(f"elementwise.{n}" for n in (
        "abs", "acos", "acosh", "asin", "asinh", "atan", "atanh", "bitwise_not", "ceil", "cos",
        "cosh", "erf", "exp", "floor", "log", "neg", "not", "reciprocal", "round", "sign", "sin",
        "sinh", "sqrt", "tan", "add", "sub", "mul", "div", "pow", "bitwise_and", "bitwise_or",
        "bitwise_xor", "max", "min", "sum", "clip")),
    *(f"nn.{n}" for n in (
        "relu", "leaky_relu", "elu", "selu", "celu", "sigmoid", "hard_sigmoid", "hard_swish",
        "softplus", "softsign", "tanh", "mish", "thresholded_relu", "swish", "gelu", "prelu")),
}

DEFAULT_ALIGNMENT = 64


@attrs.frozen
class Buffer:
    """Where one value lives: ``size`` bytes at ``offset`` in the arena, live over steps
    ``start``..``end`` (node indices, inclusive). ``in_place_of`` names the input whose slot it
    took over."""

    value: str
    offset: int
    size: int
    dtype: DType
    shape: tuple[int, ...]
    start: int
    end: int
    in_place_of: str | None = None


@attrs.frozen
class MemoryPlan:
    """The arena layout of a graph's intermediate values and how much memory it saves.

    ``naive_bytes`` is what one buffer per value costs, ``peak_live_bytes`` the most bytes live
    at one step without in-place reuse (no plan without in-place can do better), ``arena_size``
    what this plan needs. ``reused_buffers`` counts buffers placed over memory an earlier buffer
    used; ``in_place`` lists (node, input value, output value) triples.
    """

    buffers: dict[str, Buffer]
    arena_size: int
    alignment: int
    num_steps: int
    naive_bytes: int
    peak_live_bytes: int
    reused_buffers: int
    in_place: tuple[tuple[str, str, str], ...]
    unplannable: dict[str, str]

    @property
    def complete(self) -> bool:
        """Whether every intermediate value got an arena slot."""
        return not self.unplannable

    def summary(self) -> str:
        """A few lines a person reads: naive vs planned bytes, reuse counts, what was left out."""
        lines = [f"activations: {len(self.buffers)} values, naive {_mib(self.naive_bytes)}, "
                 f"peak live {_mib(self.peak_live_bytes)}, arena {_mib(self.arena_size)} "
                 f"(alignment {self.alignment})",
                 f"reuse: {self.reused_buffers} buffers reuse freed memory, "
                 f"{len(self.in_place)} values computed in place"]
        if self.unplannable:
            first = list(self.unplannable.items())[:3]
            lines.append(f"unplannable: {len(self.unplannable)} values, e.g. "
                         + "; ".join(f"%{k}: {why}" for k, why in first))
        return "\n".join(lines)

    def check(self) -> None:
        """Raise QirError if two values live at one step share bytes (other than an in-place
        hand-over) or a buffer leaves the arena or is misaligned."""
        bufs = list(self.buffers.values())
        for b in bufs:
            if b.offset % self.alignment or b.offset < 0 or b.offset + b.size > self.arena_size:
                raise QirError(f"memory plan: %{b.value} at [{b.offset}, {b.offset + b.size}) does not "
                               f"fit the arena of {self.arena_size} bytes with alignment {self.alignment}")
        bufs = [b for b in bufs if b.size > 0]
        if len(bufs) < 2:
            return
        off = np.array([b.offset for b in bufs])
        end = off + np.array([b.size for b in bufs])
        s = np.array([b.start for b in bufs])
        e = np.array([b.end for b in bufs])
        clash = ((off[:, None] < end[None, :]) & (off[None, :] < end[:, None])
                 & (s[:, None] <= e[None, :]) & (s[None, :] <= e[:, None]))
        np.fill_diagonal(clash, False)
        for i, j in zip(*np.nonzero(np.triu(clash))):
            a, b = bufs[i], bufs[j]
            if _hand_over(a, b) or _hand_over(b, a):
                continue
            raise QirError(f"memory plan: %{a.value} (steps {a.start}..{a.end}) and %{b.value} "
                           f"(steps {b.start}..{b.end}) are live together and overlap in the arena")


def _hand_over(a: Buffer, b: Buffer) -> bool:
    """``b`` took over ``a``'s slot in place at the step where ``a`` dies."""
    return b.in_place_of == a.value and a.end == b.start and a.offset == b.offset


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


# -- sizes ---------------------------------------------------------------------------------

def resolve_shape(value: Value, dims: Mapping[str, int]) -> tuple[tuple[int, ...] | None, str]:
    """The static shape of ``value`` with symbols bound by ``dims``, or (None, why not)."""
    t = value.type
    if not isinstance(t, TensorType):
        return None, f"its type {t} is not a tensor"
    if t.dtype is DType.STRING:
        return None, "string tensors have no fixed size"
    if t.shape is None:
        return None, "its rank is unknown"
    shape = []
    for d in t.shape:
        if isinstance(d, int):
            shape.append(d)
        elif d in dims:
            shape.append(int(dims[d]))
        else:
            return None, f"dim {d!r} is not known before run time (bind it with dims={{{d!r}: ...}})"
    return tuple(shape), ""


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


# -- liveness ------------------------------------------------------------------------------

def captured_values(node: Node, graph: Graph) -> list[Value]:
    """Values of ``graph`` that the node's subgraphs read (a capture is a use at the node)."""
    found: dict[int, Value] = {}
    for sub in node.subgraphs():
        for inner in sub.walk():
            for v in inner.inputs:
                if v is not None and v.graph is graph:
                    found[id(v)] = v
        for g in _graph_tree(sub):
            for v in g.outputs:
                if v.graph is graph:
                    found[id(v)] = v
    return list(found.values())


def _graph_tree(g: Graph):
    yield g
    for node in g.nodes:
        for sub in node.subgraphs():
            yield from _graph_tree(sub)


def live_ranges(graph: Graph) -> dict[int, tuple[int, int]]:
    """id(value) → (first step, last step) for every node output of the top-level graph."""
    ranges: dict[int, list[int]] = {}
    for step, node in enumerate(graph.nodes):
        reads = [v for v in node.inputs if v is not None] + captured_values(node, graph)
        for v in reads:
            if id(v) in ranges:
                ranges[id(v)][1] = step
        for out in node.outputs:
            ranges[id(out)] = [step, step]
    end = len(graph.nodes)
    for v in graph.outputs:
        if id(v) in ranges:
            ranges[id(v)][1] = end
    return {k: (a, b) for k, (a, b) in ranges.items()}


# -- planning ------------------------------------------------------------------------------

@attrs.define
class _Group:
    """Values sharing one slot: a value and the in-place outputs chained onto it."""

    members: list[Value]
    size: int
    start: int
    end: int
    offset: int = 0


def plan_memory(graph: Graph, dims: Mapping[str, int] | None = None, *,
                alignment: int = DEFAULT_ALIGNMENT, in_place: bool = True) -> MemoryPlan:
    """Plan arena offsets for the intermediate values of ``graph`` (see the module docstring)."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise QirError(f"memory plan: alignment must be a power of two, not {alignment}")
    dims = dict(dims or {})
    ranges = live_ranges(graph)
    outputs = {id(v) for v in graph.outputs}
    sizes: dict[int, tuple[int, tuple[int, ...]]] = {}
    unplannable: dict[str, str] = {}
    for node in graph.nodes:
        for v in node.outputs:
            shape, why = resolve_shape(v, dims)
            if shape is None:
                unplannable[v.name] = why
            else:
                sizes[id(v)] = (math.prod(shape) * v.type.dtype.numpy.itemsize, shape)

    group_of: dict[int, _Group] = {}
    groups: list[_Group] = []
    triples: list[tuple[str, str, str]] = []
    for step, node in enumerate(graph.nodes):
        for out in node.outputs:
            if id(out) not in sizes:
                continue
            donor = _in_place_donor(node, out, step, ranges, sizes, outputs, group_of) if in_place else None
            if donor is not None:
                g = group_of[id(donor)]
                g.members.append(out)
                g.end = ranges[id(out)][1]
                triples.append((node.name, donor.name, out.name))
            else:
                start, end = ranges[id(out)]
                g = _Group([out], sizes[id(out)][0], start, end)
                groups.append(g)
            group_of[id(out)] = g

    _place(groups, alignment)
    buffers: dict[str, Buffer] = {}
    for g in groups:
        prev = None
        for v in g.members:
            start, end = ranges[id(v)]
            size, shape = sizes[id(v)]
            buffers[v.name] = Buffer(v.name, g.offset, size, v.type.dtype, shape, start, end,
                                     None if prev is None else prev.name)
            prev = v
    arena = _align(max((g.offset + g.size for g in groups), default=0), alignment)
    values = [v for g in groups for v in g.members]
    naive = sum(_align(sizes[id(v)][0], alignment) for v in values)
    return MemoryPlan(buffers, arena, alignment, len(graph.nodes), naive,
                      _peak_live(values, ranges, sizes, alignment, len(graph.nodes)),
                      _count_reused(groups, alignment), tuple(triples), unplannable)


def _in_place_donor(node: Node, out: Value, step: int, ranges, sizes, outputs, group_of) -> Value | None:
    """The input whose slot ``out`` may take over, or None."""
    if node.op not in IN_PLACE_OPS or len(node.outputs) != 1:
        return None
    for v in node.inputs:
        if (v is not None and id(v) in group_of and id(v) not in outputs
                and ranges[id(v)][1] == step and group_of[id(v)].members[-1] is v
                and v.type.dtype == out.type.dtype and sizes[id(v)] == sizes[id(out)]):
            return v
    return None


def _place(groups: list[_Group], alignment: int) -> None:
    """Greedy by size, best fit: largest first, into the smallest gap left by overlapping ones."""
    order = sorted(range(len(groups)), key=lambda i: (-groups[i].size, groups[i].start, i))
    n = len(groups)
    off = np.zeros(n, dtype=np.int64)
    asz = np.zeros(n, dtype=np.int64)
    s = np.zeros(n, dtype=np.int64)
    e = np.zeros(n, dtype=np.int64)
    for k, i in enumerate(order):
        g = groups[i]
        need = _align(g.size, alignment)
        best = 0
        if need > 0 and k > 0:
            hit = np.nonzero((s[:k] <= g.end) & (e[:k] >= g.start) & (asz[:k] > 0))[0]
            if hit.size:
                o = off[hit]
                srt = np.argsort(o, kind="stable")
                o, ends = o[srt], o[srt] + asz[hit][srt]
                prev = np.concatenate([[0], np.maximum.accumulate(ends)[:-1]])
                gaps = o - prev
                fits = np.nonzero(gaps >= need)[0]
                best = int(prev[fits[np.argmin(gaps[fits])]]) if fits.size else int(ends.max())
        g.offset = best
        off[k], asz[k], s[k], e[k] = best, need, g.start, g.end


def _peak_live(values, ranges, sizes, alignment: int, steps: int) -> int:
    """The most aligned bytes live at any one step, counting every value separately."""
    delta = np.zeros(steps + 2, dtype=np.int64)
    for v in values:
        start, end = ranges[id(v)]
        n = _align(sizes[id(v)][0], alignment)
        delta[start] += n
        delta[end + 1] -= n
    return int(np.cumsum(delta).max()) if values else 0


def _count_reused(groups: list[_Group], alignment: int) -> int:
    """Buffers whose bytes an earlier buffer, dead by then, had used."""
    live = [g for g in groups if g.size > 0]
    if not live:
        return 0
    off = np.array([g.offset for g in live])
    end = off + np.array([_align(g.size, alignment) for g in live])
    e = np.array([g.end for g in live])
    count = 0
    for i, g in enumerate(live):
        if np.any((e < g.start) & (off < end[i]) & (off[i] < end)):
            count += 1
    return count


# -- checking a plan -----------------------------------------------------------------------

def run_with_plan(graph: Graph, plan: MemoryPlan, feeds: Mapping[str, Any]) -> list[Any]:
    """Run ``graph`` with the reference kernels, keeping every planned value only in its arena
    slot (written after its node, read back before each use), and return the outputs.

    A checker, not a runtime: if the plan let a value be overwritten while still live, the
    outputs differ from the interpreter's.
    """
    arena = np.zeros(max(plan.arena_size, 1), dtype=np.uint8)
    env: dict[int, Any] = {}
    for v in graph.inputs:
        env[id(v)] = feeds[v.name]
    for v in graph.constants.values():
        env[id(v)] = v.const

    def read(v: Value) -> Any:
        b = plan.buffers.get(v.name)
        if b is None or v.graph is not graph:
            return env[id(v)]
        raw = arena[b.offset:b.offset + b.size]
        return raw.view(b.dtype.numpy).reshape(b.shape).copy()

    def write(v: Value, result: Any) -> None:
        b = plan.buffers.get(v.name)
        if b is None or v.graph is not graph:
            env[id(v)] = conform(v, result)
            return
        arr = np.asarray(result).astype(b.dtype.numpy, copy=False)
        arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        if arr.shape != b.shape:
            raise QirError(f"memory plan: %{v.name} was planned as {b.shape} but computed as {arr.shape}")
        arena[b.offset:b.offset + b.size] = arr.reshape(-1).view(np.uint8)

    for node in graph.nodes:
        opdef = get_op(node.op)
        inputs = [None if v is None else read(v) for v in node.inputs]
        runner = None
        if opdef.needs_runner:
            outer = dict(env)
            outer.update({id(v): read(v) for v in captured_values(node, graph)})
            runner = lambda sub, args, _o=outer: _run_sub(sub, args, _o)  # noqa: E731
        for v, r in zip(node.outputs, call_kernel(opdef, node, inputs, runner)):
            write(v, r)
    return [read(v) for v in graph.outputs]


def _run_sub(graph: Graph, args: list, outer: dict) -> list:
    """Run a subgraph plainly (its values are not planned), seeing the captured outer values."""
    env = dict(outer)
    for v, a in zip(graph.inputs, args):
        env[id(v)] = a
    for v in graph.constants.values():
        env[id(v)] = v.const
    for node in graph.nodes:
        opdef = get_op(node.op)
        runner = (lambda sub, a, _e=env: _run_sub(sub, a, _e)) if opdef.needs_runner else None
        results = call_kernel(opdef, node, [None if v is None else env[id(v)] for v in node.inputs], runner)
        for v, r in zip(node.outputs, results):
            env[id(v)] = conform(v, r)
    return [env[id(v)] for v in graph.outputs]

