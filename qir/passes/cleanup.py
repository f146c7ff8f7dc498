"""Cleanup passes: ``canonicalize``, ``dce``, ``cse`` and ``eliminate-noops``.

They keep the graph's input and output names: a graph output that a rewrite replaces hands its
name to the replacement (or, when the replacement cannot take it, to an identity), see
:func:`replace_value`. Rewritten nodes carry the union of the provenance of the nodes they replace.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator

import attrs
import numpy as np

from qir.ir.graph import Graph, Node, Value, merge_provenance
from qir.ir.opdef import REQUIRED, get_op, has_op
from qir.ir.printer import is_splat, splat_value
from qir.ir.ops.tensor import slice_bounds
from qir.ir.types import DType, TensorType
from qir.passes.registry import Pass, register_pass

# -- shared helpers (fold.py uses them too) -------------------------------------------------

_RANDOM_WORDS = ("random", "bernoulli", "multinomial")


def has_side_effects(node: Node) -> bool:
    """Whether running ``node`` twice, or not at all, could differ from running it once.

    Random ops (by name) and dropout in training mode (unless known off) are not pure; nodes with
    subgraphs are treated as impure when their bodies are.
    """
    if any(word in node.op for word in _RANDOM_WORDS):
        return True
    if node.op == "nn.dropout":
        return not dropout_is_inference(node)
    return any(has_side_effects(n) for sub in node.subgraphs() for n in sub.walk())


def dropout_is_inference(node: Node) -> bool:
    """Whether a dropout node is in inference mode (training_mode absent or a false constant)."""
    mode = node.inputs[2] if len(node.inputs) > 2 else None
    ratio = node.inputs[1] if len(node.inputs) > 1 else None
    if mode is None:
        return True
    if mode.const is not None and not bool(np.asarray(mode.const).reshape(-1)[0]):
        return True
    # training with ratio 0 keeps everything too
    return ratio is not None and ratio.const is not None and float(np.asarray(ratio.const).reshape(-1)[0]) == 0.0


def graph_tree(graph: Graph) -> Iterator[Graph]:
    """``graph`` and every subgraph under it."""
    yield graph
    for node in graph.nodes:
        for sub in node.subgraphs():
            yield from graph_tree(sub)


class OutputIndex:
    """Which graphs of a tree return which values (graph outputs are not uses), kept up to date
    by :func:`replace_value`; built once per pass run so that rewrites need no whole-tree scans."""

    def __init__(self, graph: Graph):
        self._where: dict[int, list[Graph]] = {}
        for g in graph_tree(graph.root):
            for v in g.outputs:
                self._where.setdefault(id(v), []).append(g)

    def __contains__(self, value: Value) -> bool:
        return id(value) in self._where

    def forget(self, graph: Graph) -> None:
        """Drop a graph tree that is going away (an inlined or discarded If branch)."""
        gone = {id(g) for g in graph_tree(graph)}
        for key in list(self._where):
            kept = [g for g in self._where[key] if id(g) not in gone]
            if kept:
                self._where[key] = kept
            else:
                del self._where[key]

    def replace(self, old: Value, new: Value) -> None:
        """Make the graphs that return ``old`` return ``new``."""
        graphs = self._where.pop(id(old), [])
        for g in dict.fromkeys(graphs):
            g.outputs = [new if v is old else v for v in g.outputs]
        if graphs:
            self._where.setdefault(id(new), []).extend(graphs)


def output_ids(graph: Graph) -> OutputIndex:
    """The index of the values any graph of ``graph``'s tree returns."""
    return OutputIndex(graph)


def replace_value(graph: Graph, old: Value, new: Value, provenance=(), outs: OutputIndex | None = None) -> Value:
    """Make every reader of ``old`` read ``new``; keep ``old``'s name where it is a graph output.

    When ``old`` is returned by a graph and ``new`` is a node output of the same graph that no
    graph returns, ``new`` takes ``old``'s name. Otherwise (``new`` is an input, a constant, an
    outer value or already returned) an identity named like ``old`` is inserted, with
    ``provenance``. Returns the value that now stands for ``old``.
    """
    outs = outs if outs is not None else OutputIndex(graph)
    if old not in outs:
        graph.replace_all_uses(old, new, include_outputs=False)
        return new
    name = old.name
    owner = old.graph or graph
    movable = new.producer is not None and new.graph is owner and new not in outs
    owner.rename(old, name + ".replaced")
    if movable:
        owner.replace_all_uses(old, new, include_outputs=False)
        outs.replace(old, new)
        owner.rename(new, name)
        return new
    where = old.producer
    ident = owner.add_node("tensor.identity", [new], output_names=[name], output_types=[old.type],
                           provenance=provenance, before=where if where is not None and where.graph is owner else None)
    owner.replace_all_uses(old, ident.output, include_outputs=False)
    outs.replace(old, ident.output)
    return ident.output


def erase_dead(graph: Graph, node: Node, outs: OutputIndex | None = None) -> bool:
    """Erase ``node`` if nothing reads or returns its outputs; True when erased."""
    outs = outs if outs is not None else OutputIndex(graph)
    if any(v._uses or v in outs for v in node.outputs):
        return False
    graph.erase_node(node)
    return True


def exact_shape(value: Value | None):
    """The value's shape when it is fully known up to symbols (no unknown ``?`` dims)."""
    t = None if value is None else value.type
    if isinstance(t, TensorType) and t.shape is not None and "?" not in t.shape:
        return t.shape
    return None


def const_ints(value: Value | None) -> list[int] | None:
    if value is None or value.const is None or value.const.dtype.kind not in "iu":
        return None
    return [int(v) for v in value.const.reshape(-1)]


def rank_of(value: Value | None) -> int | None:
    t = None if value is None else value.type
    return t.rank if isinstance(t, TensorType) else None


# -- dce ------------------------------------------------------------------------------------

def dead_code_elimination(graph: Graph) -> bool:
    """Remove nodes and constants nothing uses, in subgraphs too; graph outputs stay."""
    outs = output_ids(graph)
    return _dce(graph, outs)


def _dce(graph: Graph, outs: OutputIndex) -> bool:
    changed = False
    for node in reversed(list(graph.nodes)):
        if not node.outputs or any(v._uses or v in outs for v in node.outputs):
            # (a node without outputs exists for an effect: keep it)
            for sub in node.subgraphs():
                changed |= _dce(sub, outs)
            continue
        graph.erase_node(node)
        changed = True
    for value in list(graph.constants.values()):
        if not value._uses and value not in outs:
            graph.erase_constant(value)
            changed = True
    return changed


@register_pass
@attrs.define
class DeadCodeElimination(Pass):
    """Remove nodes and constants whose values nothing uses (subgraphs too; never graph outputs)."""

    name = "dce"
    opt_level = 1

    def run(self, graph: Graph, ctx) -> bool:
        return dead_code_elimination(graph)


# -- cse ------------------------------------------------------------------------------------

def _hashable(value: Any) -> Any:
    """An attribute value as a hashable key; arrays compare by dtype, shape and contents."""
    if isinstance(value, np.ndarray):
        return ("array", *_array_key(value))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, float):
        return ("float", np.float64(value).tobytes())  # -0.0 ≠ 0.0, NaN == the same NaN
    if isinstance(value, np.generic):
        return _hashable(value.item())
    if isinstance(value, Graph):
        raise TypeError("graph attribute")
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    hash(value)
    return (type(value).__name__, value)


def _array_key(array: np.ndarray) -> tuple:
    if is_splat(array):  # one value broadcast: compare the value, never hash the logical size
        one = splat_value(array)
        return (str(array.dtype), array.shape, "splat", one.tobytes())
    if array.dtype == object:
        data = hashlib.sha256(repr(array.reshape(-1).tolist()).encode()).hexdigest()
    else:
        data = hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1).tobytes()
                              if array.size else b"").hexdigest()
    return (str(array.dtype), array.shape, data)


def _node_key(node: Node) -> tuple | None:
    if has_side_effects(node) or node.subgraphs() or not node.outputs:
        return None
    try:
        attrs_key = _hashable(get_op(node.op).resolve_attrs(node.attrs)) if has_op(node.op) else None
    except Exception:
        return None
    if attrs_key is None:
        return None
    inputs = tuple(None if v is None else id(v) for v in node.inputs)
    types = tuple(str(v.type) for v in node.outputs)
    return (node.op, inputs, attrs_key, len(node.outputs), types, node.target)


def common_subexpression_elimination(graph: Graph) -> bool:
    """Merge identical pure nodes and constants with equal contents (subgraphs see outer ones)."""
    return _cse(graph, {}, output_ids(graph))


def _cse(graph: Graph, outer_consts: dict, outs: OutputIndex) -> bool:
    changed = False
    consts = {k: dict(v) for k, v in outer_consts.items()}
    for value in list(graph.constants.values()):
        # Bucket by type first: contents are hashed only when two constants share a type.
        bucket = consts.setdefault((str(value.type), str(value.const.dtype)), {})
        if not bucket:
            bucket[None] = value
            continue
        if None in bucket:
            first = bucket.pop(None)
            bucket[_array_key(first.const)] = first
        key = _array_key(value.const)
        kept = bucket.get(key)
        if kept is None:
            bucket[key] = value
            continue
        if value in outs:
            continue
        graph.replace_all_uses(value, kept, include_outputs=False)
        graph.erase_constant(value)
        changed = True
    seen: dict[tuple, Node] = {}
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            changed |= _cse(sub, consts, outs)
        key = _node_key(node)
        if key is None:
            continue
        kept = seen.get(key)
        if kept is None:
            seen[key] = node
            continue
        if any(v in outs for v in node.outputs) and any(v in outs for v in kept.outputs):
            continue  # both returned under their own names
        kept.provenance = merge_provenance([kept, node])
        for old, new in zip(node.outputs, kept.outputs):
            replace_value(graph, old, new, outs=outs)
        graph.erase_node(node)
        changed = True
    return changed


@register_pass
@attrs.define
class CommonSubexpressionElimination(Pass):
    """Merge nodes with the same op, inputs and attributes, and constants with equal contents."""

    name = "cse"
    opt_level = 1

    def run(self, graph: Graph, ctx) -> bool:
        return common_subexpression_elimination(graph)


# -- canonicalize ---------------------------------------------------------------------------

#: Binary (or variadic) ops whose inputs may be reordered.
COMMUTATIVE = frozenset({
    "elementwise.add", "elementwise.mul", "elementwise.and", "elementwise.or", "elementwise.xor",
    "elementwise.equal", "elementwise.bitwise_and", "elementwise.bitwise_or", "elementwise.bitwise_xor",
    "elementwise.max", "elementwise.min", "elementwise.sum", "elementwise.mean",
})

#: Ops whose ``axis`` attribute counts over the rank of input 0 (the value: how many axes past
#: the last one are allowed too, e.g. flatten's axis may equal the rank; informative only).
_AXIS_OF_INPUT0 = {
    "tensor.concat": 0, "tensor.gather": 0, "tensor.gather_elements": 0, "tensor.scatter_elements": 0,
    "tensor.split": 0, "tensor.flatten": 1, "tensor.compress": 0, "tensor.unique": 0,
    "nn.softmax": 0, "nn.log_softmax": 0, "nn.hardmax": 0, "nn.layer_normalization": 0,
    "nn.lp_normalization": 0, "nn.rms_normalization": 0, "reduce.argmax": 0, "reduce.argmin": 0,
    "reduce.top_k": 0, "control.split_to_sequence": 0,
}
#: Ops with an axes input (index) that counts over the rank of input 0, or of the output (+n).
_AXES_INPUT = {
    "tensor.squeeze": 1, "tensor.slice": 3, "tensor.pad": 3,
    **{f"reduce.{r}": 1 for r in ("l1", "l2", "log_sum", "log_sum_exp", "max", "mean", "min", "prod",
                                   "sum", "sum_square")},
}


def _normal_attr(value: Any) -> Any:
    """Python-native attribute values: numpy scalars → int/float, lists → tuples."""
    if isinstance(value, np.generic) and not isinstance(value, np.ndarray):
        return value.item()
    if isinstance(value, list):
        return tuple(_normal_attr(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_normal_attr(v) for v in value)
    return value


def _coerce_attr(value: Any, kind: str) -> Any:
    """An int given for a float attribute (alpha=1) becomes 1.0, and so on, so that equal
    attributes compare equal."""
    number = (int, float) if not isinstance(value, bool) else ()
    if kind == "float" and isinstance(value, number):
        return float(value)
    if kind == "int" and isinstance(value, bool):
        return int(value)
    if kind == "floats" and isinstance(value, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             for v in value):
        return tuple(float(v) for v in value)
    if kind == "ints" and isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return tuple(int(v) for v in value)
    return value


def _canonical_attrs(node: Node) -> dict | None:
    """Every schema attribute explicit, in schema order; None defaults stay absent."""
    if not has_op(node.op):
        return None
    schema = get_op(node.op).attrs
    if set(node.attrs) - set(schema):
        return None  # the verifier reports it
    out = {}
    for key, spec in schema.items():
        if key in node.attrs:
            value = _coerce_attr(_normal_attr(node.attrs[key]), spec.kind)
        elif spec.default is REQUIRED:
            return None
        else:
            value = spec.default
        if value is None and spec.default is None:
            continue
        out[key] = value
    return out


def _attrs_equal(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if x is y:
            continue
        if type(x) is not type(y):
            return False
        if isinstance(x, np.ndarray) or isinstance(x, Graph):
            return False
        try:
            if x != y:
                return False
        except Exception:
            return False
    return True


def _canonicalize_node(graph: Graph, node: Node, outs: OutputIndex) -> bool:
    changed = False
    attrs_ = _canonical_attrs(node)
    if attrs_ is not None and not _attrs_equal(attrs_, node.attrs):
        node.attrs = attrs_
        changed = True
    # Only two inputs: with three or more, moving constants would reassociate float sums.
    if node.op in COMMUTATIVE and len(node.inputs) == 2 and all(v is not None for v in node.inputs):
        order = sorted(range(len(node.inputs)), key=lambda i: node.inputs[i].const is not None)
        if order != list(range(len(node.inputs))):
            values = [node.inputs[i] for i in order]
            for i, v in enumerate(values):
                node.set_input(i, v)
            changed = True
    changed |= _normalize_axes(graph, node, outs)
    return changed


def _normalize_axes(graph: Graph, node: Node, outs: OutputIndex) -> bool:
    rank = rank_of(node.inputs[0]) if node.inputs else None
    if rank is None:
        return False
    changed = False
    extra = _AXIS_OF_INPUT0.get(node.op)
    axis = node.attrs.get("axis")
    if extra is not None and isinstance(axis, int) and -rank <= axis < 0:
        node.attrs["axis"] = axis + rank
        changed = True
    if node.op == "tensor.transpose":
        perm = node.attrs.get("perm")
        new = tuple(range(rank - 1, -1, -1)) if perm is None else tuple(
            p + rank if -rank <= p < 0 else p for p in perm)
        if perm is None or tuple(perm) != new:
            node.attrs["perm"] = new
            changed = True
    if node.op in ("quant.quantize_linear", "quant.dequantize_linear"):
        scale_rank = rank_of(node.inputs[1]) if len(node.inputs) > 1 else None
        axis = node.attrs.get("axis", 1)
        if scale_rank and -rank <= axis < 0:
            node.attrs["axis"] = axis + rank
            changed = True
    index = _AXES_INPUT.get(node.op)
    if node.op == "tensor.unsqueeze":
        index = 1
        axes = const_ints(node.inputs[1])
        rank = rank + (len(axes) if axes is not None else 0)
    if index is not None and index < len(node.inputs):
        axes = const_ints(node.inputs[index])
        if axes is not None and any(-rank <= a < 0 for a in axes) and all(-rank <= a < rank for a in axes):
            old = node.inputs[index]
            array = np.array([a % rank for a in axes], dtype=old.const.dtype).reshape(old.const.shape)
            node.set_input(index, graph.add_constant(array, name=old.name))
            if not old._uses and old.graph is not None and old.name in old.graph.constants \
                    and old not in outs:
                old.graph.erase_constant(old)
            changed = True
    return changed


def canonicalize(graph: Graph, outs: OutputIndex | None = None) -> bool:
    """Put every node of ``graph`` (and its subgraphs) in normal form; True if anything changed."""
    outs = outs if outs is not None else OutputIndex(graph)
    changed = False
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            changed |= canonicalize(sub, outs)
        changed |= _canonicalize_node(graph, node, outs)
    return changed


@register_pass
@attrs.define
class Canonicalize(Pass):
    """Normal forms: explicit attributes, constants last in commutative ops, non-negative axes."""

    name = "canonicalize"
    opt_level = 1

    def run(self, graph: Graph, ctx) -> bool:
        return canonicalize(graph)


# -- eliminate-noops ------------------------------------------------------------------------

#: Rules: node → the value it can be replaced by (None: keep the node).
NoopRule = Callable[[Graph, Node], "Value | None"]
_NOOP_RULES: dict[str, list[NoopRule]] = {}


def noop_rule(*ops: str):
    """Register a no-op rule for ``ops`` (plugins may add their own)."""

    def wrap(fn: NoopRule) -> NoopRule:
        for name in ops:
            _NOOP_RULES.setdefault(name, []).append(fn)
        return fn

    return wrap


def _same_type_shape(a: Value, b: Value) -> bool:
    """Both values have the same dtype and the same fully known shape (symbols allowed)."""
    ta, tb = a.type, b.type
    if not (isinstance(ta, TensorType) and isinstance(tb, TensorType)) or ta.dtype != tb.dtype:
        return False
    sa, sb = exact_shape(a), exact_shape(b)
    return sa is not None and sa == sb


@noop_rule("tensor.identity")
def _identity(graph: Graph, node: Node):
    return node.inputs[0]


@noop_rule("tensor.reshape", "tensor.flatten", "tensor.squeeze", "tensor.unsqueeze", "tensor.expand")
def _same_shape(graph: Graph, node: Node):
    x = node.inputs[0]
    if node.op == "tensor.expand" and exact_shape(x) is None:
        return None
    # A symbolic shape equal to the output's means the same dims only for these shape ops
    # (a symbol is one runtime value); '?' dims never match.
    return x if _same_type_shape(x, node.output) else None


_RESHAPE_LIKE = {"tensor.reshape", "tensor.flatten", "tensor.squeeze", "tensor.unsqueeze"}


@noop_rule(*_RESHAPE_LIKE)
def _reshape_round_trip(graph: Graph, node: Node):
    """A chain of reshape-like ops that ends in the shape it started from (squeeze∘unsqueeze...)."""
    value = node.inputs[0]
    for _ in range(8):  # chains are short; bound the walk
        inner = value.producer
        if inner is None or inner.op not in _RESHAPE_LIKE or inner.graph is not graph:
            return None
        value = inner.inputs[0]
        if _same_type_shape(value, node.output):
            return value
    return None


@noop_rule("tensor.reshape")
def _reshape_chain(graph: Graph, node: Node):
    inner = node.inputs[0].producer
    if inner is None or inner.op not in _RESHAPE_LIKE or inner.graph is not graph:
        return None
    target = const_ints(node.inputs[1])
    if target is None or (0 in target and not node.attrs.get("allowzero", 0)):
        return None  # a 0 would copy a dim of the intermediate shape
    node.set_input(0, inner.inputs[0])
    node.provenance = merge_provenance([inner, node]) if not inner.outputs[0]._uses else node.provenance
    return node.output  # changed in place


@noop_rule("tensor.transpose")
def _transpose(graph: Graph, node: Node):
    rank = rank_of(node.inputs[0])
    perm = node.attrs.get("perm")
    if perm is None:
        if rank is None:
            return None
        perm = tuple(range(rank - 1, -1, -1))
    perm = [int(p) for p in perm]
    if perm == list(range(len(perm))):
        return node.inputs[0]
    inner = node.inputs[0].producer
    if inner is None or inner.op != "tensor.transpose" or inner.graph is not graph:
        return None
    inner_perm = inner.attrs.get("perm")
    if inner_perm is None:
        r = rank_of(inner.inputs[0])
        if r is None:
            return None
        inner_perm = tuple(range(r - 1, -1, -1))
    if len(inner_perm) != len(perm):
        return None
    composed = tuple(int(inner_perm[p]) % len(perm) for p in perm)
    if composed == tuple(range(len(perm))):
        node.provenance = merge_provenance([inner, node])
        return inner.inputs[0]
    node.set_input(0, inner.inputs[0])
    node.attrs["perm"] = composed
    if not inner.output._uses:
        node.provenance = merge_provenance([inner, node])
    return node.output


def _lossless(src: DType, dst: DType) -> bool:
    """Whether every value of ``src`` converts exactly to ``dst`` (and back)."""
    if src == dst:
        return True
    if src == DType.BOOL:
        return dst.is_int or dst in (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64)
    floats = {DType.FLOAT16: (11, 5), DType.BFLOAT16: (8, 8), DType.FLOAT32: (24, 8), DType.FLOAT64: (53, 11)}
    ints = {DType.INT8: (8, True), DType.INT16: (16, True), DType.INT32: (32, True), DType.INT64: (64, True),
            DType.UINT8: (8, False), DType.UINT16: (16, False), DType.UINT32: (32, False), DType.UINT64: (64, False)}
    if src in floats and dst in floats:
        (m1, e1), (m2, e2) = floats[src], floats[dst]
        return m2 >= m1 and e2 >= e1
    if src in ints and dst in ints:
        (b1, s1), (b2, s2) = ints[src], ints[dst]
        return (s1 == s2 and b2 >= b1) or (not s1 and s2 and b2 > b1)
    if src in ints and dst in floats:
        bits, signed = ints[src]
        return floats[dst][0] >= bits - (1 if signed else 0)
    return False


def _dtype_of(value: Value | None) -> DType | None:
    t = None if value is None else value.type
    return t.dtype if isinstance(t, TensorType) else None


@noop_rule("elementwise.cast")
def _cast(graph: Graph, node: Node):
    src, dst = _dtype_of(node.inputs[0]), node.attrs.get("to")
    if src is None or src == DType.STRING:
        return None
    if src == dst:
        return node.inputs[0]
    inner = node.inputs[0].producer
    if inner is None or inner.op != "elementwise.cast" or inner.graph is not graph:
        return None
    first = _dtype_of(inner.inputs[0])
    if first is None or first == DType.STRING or not _lossless(first, src):
        return None
    if first == dst:
        node.provenance = merge_provenance([inner, node])
        return inner.inputs[0]
    node.set_input(0, inner.inputs[0])
    return node.output


@noop_rule("nn.dropout")
def _dropout(graph: Graph, node: Node):
    if not dropout_is_inference(node):
        return None
    if len(node.outputs) > 1 and (node.outputs[1]._uses or node.outputs[1] in output_ids(graph)):
        return None
    return node.inputs[0]


@noop_rule("tensor.pad")
def _pad(graph: Graph, node: Node):
    pads = const_ints(node.inputs[1])
    if pads is not None and not any(pads) and _dtype_of(node.inputs[0]) == _dtype_of(node.output):
        return node.inputs[0]
    return None


@noop_rule("tensor.concat", "elementwise.sum", "elementwise.max", "elementwise.min", "elementwise.mean")
def _single_input(graph: Graph, node: Node):
    if len(node.inputs) == 1 and _dtype_of(node.inputs[0]) == _dtype_of(node.output):
        return node.inputs[0]
    return None


_INT64_HALF = np.iinfo(np.int64).max // 2


@noop_rule("tensor.slice")
def _slice(graph: Graph, node: Node):
    """A slice with step 1 from the start to the end of every axis it names."""
    x = node.inputs[0]
    shape = exact_shape(x)
    starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
    if shape is None or starts is None or ends is None or len(starts) != len(ends):
        return None
    axes = list(range(len(starts)))
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        axes = const_ints(node.inputs[3])
    steps = [1] * len(starts)
    if len(node.inputs) > 4 and node.inputs[4] is not None:
        steps = const_ints(node.inputs[4])
    if axes is None or steps is None or len(axes) != len(starts) or len(steps) != len(starts):
        return None
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step != 1 or not -len(shape) <= axis < len(shape):
            return None
        dim = shape[axis]
        if isinstance(dim, int):
            if slice_bounds(dim, start, end, 1) != (0, dim):
                return None
        elif not ((start == 0 or start <= -_INT64_HALF) and end >= _INT64_HALF):
            return None
    return x if _dtype_of(x) == _dtype_of(node.output) else None


_NEUTRAL = {"elementwise.add": 0, "elementwise.sub": 0, "elementwise.mul": 1, "elementwise.div": 1,
            "elementwise.pow": 1}


@noop_rule(*_NEUTRAL)
def _neutral_operand(graph: Graph, node: Node):
    """x+0, x-0, x*1, x/1, x**1 where the constant does not broadcast x to a bigger shape."""
    x, c = node.inputs
    if c.const is None or c.const.size == 0 or c.const.dtype == object or _dtype_of(x) is None \
            or c.const.dtype != _dtype_of(x).numpy:
        return None  # (a mixed-dtype pow computes through float64: not an exact no-op)
    if not np.all(c.const == _NEUTRAL[node.op]):
        return None
    # x + (+0.0) turns -0.0 into +0.0: accepted, as other compilers do (the values compare equal).
    return x if _same_type_shape(x, node.output) else None


def eliminate_noops(graph: Graph, outs: OutputIndex | None = None) -> bool:
    """Remove nodes that compute their input (and shorten reshape/transpose/cast chains)."""
    outs = outs if outs is not None else OutputIndex(graph)
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph:
            continue  # erased by an earlier rewrite
        for sub in node.subgraphs():
            changed |= eliminate_noops(sub, outs)
        changed |= _simplify(graph, node, outs)
    return changed


def _simplify(graph: Graph, node: Node, outs: OutputIndex) -> bool:
    """Apply the node's rules until one replaces it or none fires (in-place rewrites repeat)."""
    changed = False
    for _ in range(8):
        for rule in _NOOP_RULES.get(node.op, ()):
            try:
                new = rule(graph, node)
            except (ValueError, TypeError, IndexError):
                new = None
            if new is None:
                continue
            if node.outputs and new is node.outputs[0]:
                changed = True
                break  # rewritten in place: try the rules again on the new form
            old = node.outputs[0]
            if node.op == "tensor.identity" and old in outs and not (
                    new.producer is not None and new.graph is graph and new not in outs):
                return changed  # this identity is what keeps the output's name
            replace_value(graph, old, new, provenance=node.provenance, outs=outs)
            erase_dead(graph, node, outs)
            return True
        else:
            return changed
    return changed


@register_pass
@attrs.define
class EliminateNoops(Pass):
    """Remove identities, no-op reshapes/transposes/casts/pads/slices, inference dropout; fuse chains."""

    name = "eliminate-noops"
    opt_level = 1

    def run(self, graph: Graph, ctx) -> bool:
        changed = eliminate_noops(graph)
        if changed:
            dead_code_elimination(graph)
        return changed
