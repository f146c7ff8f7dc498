"""Shape and type propagation with symbolic dims: the ``infer-shapes`` pass.

Every node's op inference is re-run in order (subgraphs first, then the node that holds them)
and the stored output types are refined: per dim, a known size beats a symbol and a symbol beats
the unknown dim ``?``. A stored type that contradicts the inferred one (another dtype or rank, two
different sizes) is an error naming the node.

On top of the ops' own inference, a light symbolic evaluator follows the small int64 tensors that
hold shapes (``Shape → Gather/Slice → Concat → Reshape``), element by element, with dims that may be
symbols. So ``Reshape(x, Concat(Gather(Shape(x), 0), [-1]))`` of an ``f32[N,3,4]`` gets ``[N,12]``,
where the op's inference alone only sees a non-constant shape tensor of two elements.
:class:`SymbolicShapes` is also what ``fold-constants`` uses to turn shape computations whose
values are all known into constants.
"""

from __future__ import annotations

from typing import Callable

import attrs
import numpy as np

from qir.errors import QirError, ShapeInferenceError
from qir.ir.graph import Graph, Node, Value
from qir.ir.opdef import infer_types
from qir.ir.ops.infer import broadcast_shapes
from qir.ir.ops.tensor import UNKNOWN, reshape_shape, slice_bounds
from qir.ir.types import Dim, DType, OptionalType, SequenceType, TensorType, Type
from qir.passes.registry import Pass, register_pass


@attrs.frozen
class SymValue:
    """The known contents of a small int tensor that holds dims (a 'shape tensor'): each element
    an int, a symbol name or None (unknown); ``scalar`` tells a rank-0 tensor from a vector."""

    elems: tuple
    scalar: bool = False

    @property
    def known(self) -> bool:
        """Whether every element is a known int (the value could be a constant)."""
        return all(isinstance(e, int) for e in self.elems)

    def as_dims(self) -> list[Dim]:
        """The elements as dims of a shape: unknown ones become the unknown dim ``?``."""
        return [UNKNOWN if e is None else e for e in self.elems]

    def array(self, dtype: DType) -> np.ndarray:
        """The value as an array (only when ``known``)."""
        data = np.array(self.elems, dtype=dtype.numpy)
        return data.reshape(()) if self.scalar else data


#: Largest shape tensor followed (shape tensors are short; this bounds the work per node).
_MAX_ELEMS = 64
_INT_DTYPES = {DType.INT64, DType.INT32}


def _dim(d) -> int | str | None:
    """A dim of a type as a symbolic element (the unknown dim ``?`` is None)."""
    if isinstance(d, str):
        return None if d == UNKNOWN else d
    return int(d)


class SymbolicShapes:
    """Symbolic values of the shape tensors of a graph tree, computed node by node in order.

    ``value_of(v)`` gives a :class:`SymValue` or None. Call ``visit(node)`` for each node in
    order after its input types are final (``infer-shapes`` does it as it goes).
    """

    def __init__(self):
        self._values: dict[int, SymValue] = {}

    def value_of(self, value: Value | None) -> SymValue | None:
        if value is None:
            return None
        found = self._values.get(id(value))
        if found is not None:
            return found
        if value.const is not None:
            return _from_const(value.const)
        return None

    def visit(self, node: Node) -> None:
        rule = _RULES.get(node.op)
        if rule is None or not node.outputs:
            return
        try:
            result = rule(self, node)
        except (ValueError, IndexError, TypeError, KeyError):
            return  # a malformed shape computation fails at run time, not here
        if result is not None and len(result.elems) <= _MAX_ELEMS:
            self._values[id(node.outputs[0])] = result


def _from_const(array: np.ndarray) -> SymValue | None:
    if array.ndim > 1 or array.size > _MAX_ELEMS or array.dtype.kind not in "iu":
        return None
    return SymValue(tuple(int(v) for v in array.reshape(-1)), scalar=array.ndim == 0)


# -- rules: how each shape op transforms symbolic values ------------------------------------

def _shape_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    t = node.inputs[0].type
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    dims = t.shape[slice(start, end)]
    return SymValue(tuple(_dim(d) for d in dims))


def _size_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    t = node.inputs[0].type
    if isinstance(t, TensorType) and t.is_static:
        return SymValue((int(np.prod(t.shape, dtype=np.int64)),), scalar=True)
    return None


def _gather_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    data, idx = sym.value_of(node.inputs[0]), node.inputs[1].const
    if data is None or data.scalar or idx is None or idx.ndim > 1 or node.attrs.get("axis", 0) not in (0, -1):
        return None
    n = len(data.elems)
    picked = tuple(data.elems[int(i) + n if int(i) < 0 else int(i)] for i in idx.reshape(-1))
    if any(not -n <= int(i) < n for i in idx.reshape(-1)):
        return None
    return SymValue(picked, scalar=idx.ndim == 0)


def _slice_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    data = sym.value_of(node.inputs[0])
    if data is None or data.scalar:
        return None
    params = [None if v is None else v.const for v in node.inputs[1:]]
    if any(p is None for p in params[:2]) or any(
            v is not None and p is None for v, p in zip(node.inputs[3:], params[2:])):
        return None
    starts, ends = params[0].reshape(-1), params[1].reshape(-1)
    axes = params[2].reshape(-1) if len(params) > 2 and params[2] is not None else [0]
    steps = params[3].reshape(-1) if len(params) > 3 and params[3] is not None else [1]
    if len(starts) != 1 or len(ends) != 1 or int(axes[0]) not in (0, -1) or int(steps[0]) == 0:
        return None
    start, end = slice_bounds(len(data.elems), int(starts[0]), int(ends[0]), int(steps[0]))
    step = int(steps[0])
    return SymValue(tuple(data.elems[start:None if end < 0 else end:step]))


def _concat_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    parts = [sym.value_of(v) for v in node.inputs]
    if any(p is None or p.scalar for p in parts) or node.attrs.get("axis") not in (0, -1):
        return None
    return SymValue(tuple(e for p in parts for e in p.elems))


def _unsqueeze_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    data, axes = sym.value_of(node.inputs[0]), node.inputs[1].const
    if data is None or not data.scalar or axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) not in (0, -1):
        return None
    return SymValue(data.elems)


def _squeeze_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    data = sym.value_of(node.inputs[0])
    if data is None or data.scalar or len(data.elems) != 1:
        return None
    return SymValue(data.elems, scalar=True)


def _passthrough_rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
    t = node.outputs[0].type
    if node.op == "elementwise.cast" and not (isinstance(t, TensorType) and t.dtype in _INT_DTYPES):
        return None
    return sym.value_of(node.inputs[0])


def _arith(fn: Callable[[int, int], int], identity: int | None, absorbs_symbols: bool = False):
    """Elementwise integer arithmetic on symbolic values; a symbol survives only ``x op identity``."""

    def rule(sym: SymbolicShapes, node: Node) -> SymValue | None:
        a, b = sym.value_of(node.inputs[0]), sym.value_of(node.inputs[1])
        if a is None or b is None:
            return None
        n = max(len(a.elems), len(b.elems))
        if len(a.elems) not in (1, n) or len(b.elems) not in (1, n):
            return None
        out = []
        for i in range(n):
            x, y = a.elems[i % len(a.elems)], b.elems[i % len(b.elems)]
            if isinstance(x, int) and isinstance(y, int):
                out.append(fn(x, y))
            elif y == identity and x is not None:
                out.append(x)
            elif absorbs_symbols and x == identity and y is not None:
                out.append(y)
            else:
                out.append(None)
        return SymValue(tuple(out), scalar=a.scalar and b.scalar)

    return rule


def _div(x: int, y: int) -> int:
    if y == 0:
        raise ValueError("division by zero")
    q = abs(x) // abs(y)
    return q if (x >= 0) == (y >= 0) else -q


_RULES: dict[str, Callable[[SymbolicShapes, Node], SymValue | None]] = {
    "tensor.shape": _shape_rule,
    "tensor.size": _size_rule,
    "tensor.gather": _gather_rule,
    "tensor.slice": _slice_rule,
    "tensor.concat": _concat_rule,
    "tensor.unsqueeze": _unsqueeze_rule,
    "tensor.squeeze": _squeeze_rule,
    "tensor.identity": _passthrough_rule,
    "elementwise.cast": _passthrough_rule,
    "elementwise.add": _arith(lambda x, y: x + y, 0, absorbs_symbols=True),
    "elementwise.sub": _arith(lambda x, y: x - y, 0),
    "elementwise.mul": _arith(lambda x, y: x * y, 1, absorbs_symbols=True),
    "elementwise.div": _arith(_div, 1),
}


# -- output shapes from symbolic shape inputs -----------------------------------------------

def _shape_input(sym: SymbolicShapes, node: Node, index: int) -> list[Dim] | None:
    if index >= len(node.inputs) or node.inputs[index] is None or node.inputs[index].const is not None:
        return None  # constant shape inputs are the op inference's own business
    value = sym.value_of(node.inputs[index])
    return None if value is None or value.scalar else value.as_dims()


def _in_shape(node: Node):
    t = node.inputs[0].type
    return t.shape if isinstance(t, TensorType) else None


def _reshape_out(sym: SymbolicShapes, node: Node):
    target = _shape_input(sym, node, 1)
    if target is None:
        return None
    return reshape_shape(_in_shape(node), target, node.attrs.get("allowzero", 0))


def _expand_out(sym: SymbolicShapes, node: Node):
    target, shape = _shape_input(sym, node, 1), _in_shape(node)
    if target is None or shape is None:
        return None
    return list(broadcast_shapes(tuple(shape), tuple(target)))


def _constant_of_shape_out(sym: SymbolicShapes, node: Node):
    return _shape_input(sym, node, 0)


_SHAPE_CONSUMERS = {
    "tensor.reshape": _reshape_out,
    "tensor.expand": _expand_out,
    "tensor.constant_of_shape": _constant_of_shape_out,
}


# -- merging stored and inferred types ------------------------------------------------------

def _merge_dim(stored: Dim, inferred: Dim) -> Dim | None:
    """The more specific of two dims; None when they conflict."""
    if stored == inferred:
        return stored
    if isinstance(stored, int) and isinstance(inferred, int):
        return None
    if isinstance(stored, int):
        return stored
    if isinstance(inferred, int):
        return inferred
    return inferred if stored == UNKNOWN else stored  # a symbol beats '?'; keep the model's name


def merge_types(stored: Type | None, inferred: Type | None) -> Type | None:
    """The more specific of two compatible types; raises ValueError when they conflict."""
    if stored is None:
        return inferred
    if inferred is None:
        return stored
    if type(stored) is not type(inferred):
        raise ValueError(f"{stored} vs {inferred}")
    if isinstance(stored, (SequenceType, OptionalType)):
        return attrs.evolve(stored, elem=merge_types(stored.elem, inferred.elem))
    if stored.dtype != inferred.dtype:
        raise ValueError(f"dtype {stored.dtype.value} vs {inferred.dtype.value}")
    if stored.shape is None or inferred.shape is None:
        shape = inferred.shape if stored.shape is None else stored.shape
    elif len(stored.shape) != len(inferred.shape):
        raise ValueError(f"rank {len(stored.shape)} vs {len(inferred.shape)}")
    else:
        shape = tuple(_merge_dim(s, i) for s, i in zip(stored.shape, inferred.shape))
        if any(d is None for d in shape):
            raise ValueError(f"shape {list(stored.shape)} vs {list(inferred.shape)}")
    return attrs.evolve(stored, shape=shape)


# -- the pass -------------------------------------------------------------------------------

def infer_shapes(graph: Graph, sym: SymbolicShapes | None = None) -> bool:
    """Refine every value's type in ``graph`` and its subgraphs (in place); True if any changed."""
    sym = sym or SymbolicShapes()
    changed = False
    for node in graph.nodes:
        for sub in node.subgraphs():
            changed |= infer_shapes(sub, sym)
        changed |= refine_node(node, sym)
        sym.visit(node)
    return changed


def refine_node(node: Node, sym: SymbolicShapes) -> bool:
    """Re-infer ``node``'s output types and refine the stored ones; True if any changed."""
    where = f"node {node.name} ({node.op})"
    try:
        inferred = infer_types(node, len(node.outputs))
    except ShapeInferenceError:
        raise
    except QirError as exc:
        raise ShapeInferenceError(f"{where}: {exc.message}") from exc
    consumer = _SHAPE_CONSUMERS.get(node.op)
    if consumer is not None and inferred and isinstance(inferred[0], TensorType):
        try:
            shape = consumer(sym, node)
        except (ValueError, TypeError):
            shape = None
        if shape is not None:
            try:
                inferred[0] = merge_types(inferred[0], attrs.evolve(inferred[0], shape=tuple(shape)))
            except ValueError:
                pass  # the symbolic rules are a refinement only; the op's inference stands
    changed = False
    for i, value in enumerate(node.outputs):
        new = inferred[i] if i < len(inferred) else None
        try:
            merged = merge_types(value.type, new)
        except ValueError as exc:
            raise ShapeInferenceError(
                f"{where}: output %{value.name} is stored as {value.type} but the op infers {new} ({exc})",
                hint="the model's declared shapes contradict its ops; fix or drop the declared value_info") from None
        if merged != value.type:
            value.type = merged
            changed = True
    return changed


@register_pass
@attrs.define
class InferShapes(Pass):
    """Propagate types and shapes (symbolic dims, shape-tensor arithmetic) through every node."""

    name = "infer-shapes"
    opt_level = 0
    provides = ("shapes",)

    def run(self, graph: Graph, ctx) -> bool:
        return infer_shapes(graph)
