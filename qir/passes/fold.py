"""Constant folding: the ``fold-constants`` pass.

A node whose inputs are all constants is evaluated with its op's own reference kernel and replaced
by constants, unless the result would be too big (``max-size`` elements) or much bigger than its
inputs (``max-growth``: Expand, Tile, ConstantOfShape and Range of a large shape stay nodes, so
that weights do not balloon; both caps count materialized elements). A result that is one value
broadcast (ConstantOfShape, Expand/Reshape/Transpose... of a one-element constant, elementwise ops
of such) becomes a splat constant, a zero-stride view that costs no memory, whatever its size.
Shape computations whose values are all known (``Shape`` of a static tensor, ``Gather`` of a
static dim of a partly symbolic shape...) become constants too,
found by the symbolic evaluator of ``infer-shapes``. An If whose condition is a constant is
replaced by the nodes of the branch it takes (``inline-if``). Random ops, dropout in training mode
and other nodes with subgraphs (Loop, Scan) are never folded. Constants carry no provenance.

Options: ``fold-constants{max-size=1000000,max-growth=4.0,fold-shapes=true,inline-if=true}``.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from qir.ir.graph import Graph, Node, Value
from qir.ir.opdef import call_kernel, get_op
from qir.ir.printer import is_splat, materialized_size, splat
from qir.ir.types import DType, TensorType, tensor_type_of
from qir.passes.cleanup import OutputIndex, erase_dead, has_side_effects, replace_value
from qir.passes.registry import Pass, register_pass
from qir.passes.shapes import SymbolicShapes, refine_node

#: Results up to this many elements may always be folded, whatever their inputs' size.
SMALL = 1024


def _elements(t) -> int | None:
    if isinstance(t, TensorType) and t.is_static:
        return int(np.prod(t.shape, dtype=np.int64))
    return None


@attrs.define
class Folder:
    """Folds the nodes of a graph tree; see the module docstring for the rules."""

    max_size: int = 1_000_000
    max_growth: float = 4.0
    fold_shapes: bool = True
    inline_if: bool = True
    changed: bool = False
    _outs: OutputIndex | None = None

    def run(self, graph: Graph) -> bool:
        self._outs = OutputIndex(graph)
        self._fold_graph(graph, SymbolicShapes())
        return self.changed

    def _fold_graph(self, graph: Graph, sym: SymbolicShapes) -> None:
        self._visit(graph, list(graph.nodes), sym)

    def _visit(self, graph: Graph, nodes: list[Node], sym: SymbolicShapes) -> None:
        for node in nodes:
            if node.graph is not graph:
                continue
            if self.inline_if and node.op == "control.if":
                moved = self._inline_if(graph, node)
                if moved is not None:
                    self._visit(graph, moved, sym)
                    continue
            for sub in node.subgraphs():
                self._fold_graph(sub, sym)
            # Constants folded upstream may tell this node's shapes now (a Reshape whose shape
            # tensor just became a constant): refine its types as infer-shapes would.
            refine_node(node, sym)
            sym.visit(node)
            if self._fold_splat(graph, node):
                continue
            if self._foldable(node):
                self._fold(graph, node)
            elif self.fold_shapes:
                self._fold_shape(graph, node, sym)

    def _inline_if(self, graph: Graph, node: Node) -> list[Node] | None:
        """Replace an If whose condition is a constant by the nodes of the branch it takes.

        Returns the moved nodes (now in ``graph``, where the If was), or None when the
        condition is not constant.
        """
        cond = node.inputs[0]
        if cond is None or cond.const is None or cond.const.size != 1:
            return None
        taken_then = bool(np.asarray(cond.const).reshape(-1)[0])
        taken = node.attrs["then_branch" if taken_then else "else_branch"]
        other = node.attrs["else_branch" if taken_then else "then_branch"]
        if taken.inputs or len(taken.outputs) != len(node.outputs):
            return None
        outs = self._outs
        outs.forget(taken)
        outs.forget(other)
        for inner in other.walk():  # the branch not taken reads nothing any more
            for i, v in enumerate(inner.inputs):
                if v is not None:
                    inner.set_input(i, None)
        for const in list(taken.constants.values()):
            del taken.constants[const.name]
            const.graph = graph
            graph.constants[const.name] = const
        moved = list(taken.nodes)
        where = graph.nodes.index(node)
        for inner in moved:
            inner.graph = graph
            for out in inner.outputs:
                out.graph = graph
            for sub in inner.subgraphs():
                sub.parent = graph
        graph.nodes[where:where] = moved
        taken.nodes = []
        results = list(taken.outputs)
        taken.outputs = []
        for old, new in zip(node.outputs, results):
            moved_here = new.producer is not None and new.graph is graph
            if moved_here and (new.type is None or (isinstance(new.type, TensorType) and isinstance(
                    old.type, TensorType) and new.type.shape is None)):
                new.type = old.type  # the If's own output type may be the more specific one
            replace_value(graph, old, new, provenance=node.provenance, outs=outs)
        inputs = [v for v in node.inputs if v is not None]
        graph.erase_node(node)
        _drop_unused_constants(inputs, outs)
        self.changed = True
        return moved

    def _foldable(self, node: Node) -> bool:
        if not node.outputs or node.subgraphs() or has_side_effects(node):
            return False
        if not all(v is None or v.const is not None for v in node.inputs):
            return False
        opdef = get_op(node.op)
        if opdef.needs_runner or not all(isinstance(v.type, TensorType) for v in node.outputs):
            return False
        if any(v is not None and is_splat(v.const) and v.const.size > self.max_size for v in node.inputs):
            return False  # its kernel would get the splat materialized (qir.ir.opdef.call_kernel)
        in_size = sum(materialized_size(v.const) for v in node.inputs if v is not None)
        for v in node.outputs:
            n = _elements(v.type)
            if n is not None and not self._small_enough(n, in_size):
                return False
        return True

    def _small_enough(self, n: int, in_size: int) -> bool:
        if n > self.max_size:
            return False
        return n <= SMALL or n <= self.max_growth * max(in_size, 1)

    def _fold(self, graph: Graph, node: Node) -> None:
        opdef = get_op(node.op)
        inputs = [None if v is None else v.const for v in node.inputs]
        try:
            with np.errstate(all="ignore"):
                results = call_kernel(opdef, node, inputs)
        except Exception:
            return  # the node fails at run time; folding must not hide or move the error
        if len(results) < len(node.outputs):
            return
        in_size = sum(materialized_size(a) for a in inputs if a is not None)
        arrays = []
        for value, result in zip(node.outputs, results):
            if not isinstance(result, np.ndarray) and not np.isscalar(result):
                return  # sequences, optionals
            array = np.asarray(result)
            if array.dtype != value.type.dtype.numpy:
                array = array.astype(value.type.dtype.numpy)
            if array.ndim and not array.flags.c_contiguous:
                # C order like every value the interpreter computes (qir.ir.opdef.conform): a
                # strided view (a folded transpose) would be summed, or multiplied by BLAS, in
                # another order than the unfolded value was, changing the last bit downstream
                array = np.ascontiguousarray(array)
            if not self._small_enough(int(array.size), in_size):
                return
            if value.type.shape is not None and (len(value.type.shape) != array.ndim or any(
                    isinstance(d, int) and d != s for d, s in zip(value.type.shape, array.shape))):
                return  # the kernel disagrees with the declared type: leave it to run time
            arrays.append(array)
        self._replace(graph, node, arrays)

    def _fold_splat(self, graph: Graph, node: Node) -> bool:
        """Fold a node whose result is one value broadcast into a splat constant.

        ConstantOfShape, Expand (and reshapes, transposes, tiles, slices...) of a one-element or
        splat constant, and elementwise ops of such constants. A splat (a zero-stride view) costs
        no memory, so neither size cap applies. True when the node was replaced.
        """
        if len(node.outputs) != 1 or has_side_effects(node) or node.subgraphs():
            return False
        if any(v is not None and v.const is None for v in node.inputs):
            return False
        out = node.outputs[0]
        if not isinstance(out.type, TensorType) or out.type.dtype is DType.STRING:
            return False
        rule = _SPLAT_OPS.get(node.op)
        if rule is None and node.op.startswith("elementwise."):
            rule = _pointwise_splat
        if rule is None:
            return False
        try:
            with np.errstate(all="ignore"):
                fill, shape = rule(node)
        except Exception:
            return False  # a bad node fails at run time; folding must not hide or move the error
        if fill is None or shape is None or np.asarray(fill).size != 1 or math.prod(shape) <= 1:
            return False  # (one element: nothing to save, the ordinary fold makes a plain array)
        if out.type.shape is not None and (len(out.type.shape) != len(shape) or any(
                isinstance(d, int) and d != s for d, s in zip(out.type.shape, shape))):
            return False  # the declared type disagrees: leave it to run time
        value = np.asarray(fill).reshape(())
        if value.dtype != out.type.dtype.numpy:
            value = value.astype(out.type.dtype.numpy)
        self._replace(graph, node, [splat(value, value.dtype, shape)])
        return True

    def _fold_shape(self, graph: Graph, node: Node, sym: SymbolicShapes) -> None:
        """Replace a shape computation whose value is fully known by a constant."""
        if len(node.outputs) != 1 or has_side_effects(node):
            return
        value = node.outputs[0]
        known = sym.value_of(value)
        t = value.type
        if known is None or not known.known or not isinstance(t, TensorType) or t.dtype not in (
                DType.INT64, DType.INT32):
            return
        self._replace(graph, node, [known.array(t.dtype)])

    def _replace(self, graph: Graph, node: Node, arrays: list[np.ndarray]) -> None:
        outs = self._outs
        replaced = False
        for value, array in zip(node.outputs, arrays):
            if not value._uses and value not in outs:
                continue
            const = _constant_for(graph, value, array)
            graph.replace_all_uses(value, const, include_outputs=False)
            outs.replace(value, const)
            replaced = True
        if replaced:
            self.changed = True
            inputs = [v for v in node.inputs if v is not None]
            if erase_dead(graph, node, outs):
                _drop_unused_constants(inputs, outs)
                self._erase_dead_producers(inputs, outs)


    def _erase_dead_producers(self, values: list[Value], outs: OutputIndex) -> None:
        """Erase the nodes whose only readers were folded away (e.g. the Shape of a folded Gather)."""
        stack = [v.producer for v in values if v.producer is not None]
        while stack:
            node = stack.pop()
            if node.graph is None or has_side_effects(node) or node.subgraphs():
                continue
            inputs = [v for v in node.inputs if v is not None]
            if erase_dead(node.graph, node, outs):
                _drop_unused_constants(inputs, outs)
                stack.extend(v.producer for v in inputs if v.producer is not None)


def _shape_ints(value: Value) -> tuple[int, ...]:
    return tuple(int(d) for d in np.asarray(value.const).reshape(-1))


def _one(array: np.ndarray) -> np.ndarray | None:
    """The first element of a one-element or splat array, keeping its rank; None for others."""
    if materialized_size(array) != 1 or array.dtype == object:
        return None
    return np.array(array[(slice(0, 1),) * array.ndim])  # (reshape(-1) would copy a splat)


def _static_shape(value: Value) -> tuple[int, ...] | None:
    t = value.type
    return tuple(t.shape) if isinstance(t, TensorType) and t.is_static else None


def _constant_of_shape_splat(node: Node):
    fill = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill)
    shape = _shape_ints(node.inputs[0])
    return fill, (shape if all(d >= 0 for d in shape) else None)


def _expand_splat(node: Node):
    x = node.inputs[0].const
    return _one(x), tuple(np.broadcast_shapes(x.shape, _shape_ints(node.inputs[1])))


def _rearranged_splat(node: Node):
    """Ops that only move their data input's elements: a splat in gives the same value out."""
    return _one(node.inputs[0].const), _static_shape(node.outputs[0])


def _pointwise_splat(node: Node):
    """An elementwise op of one-element/splat inputs: its kernel on one element of each."""
    if any(v is None for v in node.inputs):
        return None, None
    consts = [v.const for v in node.inputs]
    ones = [_one(c) for c in consts]
    if any(o is None for o in ones) or not any(is_splat(c) for c in consts):
        return None, None  # (plain small inputs: the ordinary fold)
    results = call_kernel(get_op(node.op), node, ones)
    return np.asarray(results[0]), tuple(np.broadcast_shapes(*(c.shape for c in consts)))


#: Ops whose result is one value broadcast when their data is: op → node → (fill, shape).
_SPLAT_OPS = {"tensor.constant_of_shape": _constant_of_shape_splat, "tensor.expand": _expand_splat,
              **dict.fromkeys(("tensor.identity", "tensor.reshape", "tensor.transpose", "tensor.squeeze",
                               "tensor.unsqueeze", "tensor.flatten", "tensor.tile", "tensor.slice"),
                              _rearranged_splat)}


def _constant_for(graph: Graph, value: Value, array: np.ndarray) -> Value:
    """A constant holding ``array`` that takes over ``value``'s name (graph outputs keep theirs)."""
    name = value.name
    graph.rename(value, name + ".folded")
    t = tensor_type_of(array)
    if isinstance(value.type, TensorType) and value.type.quant is not None:
        t = attrs.evolve(t, quant=value.type.quant)
    return graph.add_constant(array, name=name, type=t)


def _drop_unused_constants(values: list[Value], outs: OutputIndex) -> None:
    for v in values:
        if v.const is not None and not v._uses and v not in outs and v.graph is not None \
                and v.graph.constants.get(v.name) is v:
            v.graph.erase_constant(v)


def fold_constants(graph: Graph, max_size: int = 1_000_000, max_growth: float = 4.0,
                   fold_shapes: bool = True, inline_if: bool = True) -> bool:
    """Fold ``graph`` in place; True if anything changed."""
    return Folder(max_size, max_growth, fold_shapes, inline_if).run(graph)


@register_pass
@attrs.define
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are constants (and known shape computations) into constants."""

    name = "fold-constants"
    opt_level = 1
    needs = ("shapes",)
    max_size: int = 1_000_000
    max_growth: float = 4.0
    fold_shapes: bool = True
    inline_if: bool = True

    def run(self, graph: Graph, ctx) -> bool:
        return Folder(self.max_size, self.max_growth, self.fold_shapes, self.inline_if).run(graph)
