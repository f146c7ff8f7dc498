"""Layout passes: ``convert-layout{layout=NHWC}`` and ``cancel-transposes``.

qir's spatial ops (nn.conv, pooling, batch/instance norm, LRN) are channels-first (NCHW) only.
``convert-layout{layout=NHWC}`` makes the activations *between* them channels-last, expressed
with standard ops so that every target can still run the graph:

- each layout op gets adapters: ``transpose(to NCHW) → op → transpose(to NHWC)``; a constant
  conv weight is stored OHWI (transposed once, at compile time) behind its own adapter;
- transposes at the region boundaries bring values in and out of NHWC;
- then the pairs inside a region cancel: transposes are pushed down through layout-agnostic ops
  (elementwise, activations, where/clip/cast, concat/softmax with their axis remapped, constant
  operands transposed to match) and transpose∘transpose is composed, or dropped when it is the
  identity. Adapters stay (they are anchored to their op).

The result computes exactly what the input did. What is left to targets (later):
a target with native channels-last kernels replaces each adapter triple
``transpose → op → transpose`` (and the weight adapter) by its NHWC kernel, so only the boundary
transposes remain; a target without them should not run this pass, or run ``cancel-transposes``
after it, which (with no anchors) folds every adapter pair away again and gives back NCHW.
Which ops are native (``native=`` option) and whether a blocked layout (NCHWc) is used instead
are per-target decisions made when targets exist.

Limits: a transpose is pushed only into a value's single reader; where a value fans out (a
residual branch, a graph output also read inside), its boundary transpose stays, so the graph
may keep NCHW↔NHWC pairs there.

``cancel-transposes`` alone is a general cleanup: it composes transpose chains and pushes
transposes through agnostic ops wherever that removes transposes (e.g. in NHWC models exported
from TensorFlow: Transpose → Conv → Transpose → Relu → Transpose → Conv...).
"""

from __future__ import annotations

from typing import Iterable

import attrs
import numpy as np

from qir.errors import OptionError
from qir.ir.graph import Graph, Node, Value, merge_provenance
from qir.ir.types import TensorType
from qir.passes.recognize import erase_unused_constants, graphs_of, redirect, rewriting
from qir.passes.registry import Pass, register_pass

#: Channels-first spatial ops that get adapters (data input 0, output 0).
LAYOUT_OPS: frozenset[str] = frozenset({
    "nn.conv", "nn.conv_transpose", "nn.max_pool", "nn.average_pool", "nn.lp_pool",
    "nn.global_average_pool", "nn.global_max_pool", "nn.global_lp_pool",
    "nn.batch_normalization", "nn.instance_normalization", "nn.lrn"})

#: Ops computing each output element from the same position of every (broadcast) input:
#: transpose(op(a, b)) == op(transpose(a), transpose(b)).
AGNOSTIC_OPS: frozenset[str] = frozenset({
    *(f"elementwise.{n}" for n in (
        "abs", "acos", "acosh", "asin", "asinh", "atan", "atanh", "bitwise_not", "ceil", "cos",
        "cosh", "erf", "exp", "floor", "log", "neg", "not", "reciprocal", "round", "sign", "sin",
        "sinh", "sqrt", "tan", "add", "sub", "mul", "div", "pow", "mod", "bitwise_and",
        "bitwise_or", "bitwise_xor", "equal", "less", "greater", "less_or_equal",
        "greater_or_equal", "and", "or", "xor", "max", "min", "sum", "mean", "where", "clip",
        "cast", "is_nan", "is_inf")),
    *(f"nn.{n}" for n in (
        "relu", "leaky_relu", "elu", "selu", "celu", "sigmoid", "hard_sigmoid", "hard_swish",
        "softplus", "softsign", "tanh", "mish", "thresholded_relu", "swish", "gelu", "prelu"))})

#: Ops with one ``axis`` attribute that follows the data when it is transposed.
AXIS_OPS: frozenset[str] = frozenset({"tensor.concat", "nn.softmax", "nn.log_softmax"})

LAYOUTS = ("NHWC", "NCHW")


def to_last(rank: int) -> list[int]:
    """The perm NC(spatial) → N(spatial)C."""
    return [0, *range(2, rank), 1]


def to_first(rank: int) -> list[int]:
    """The perm N(spatial)C → NC(spatial)."""
    return [0, rank - 1, *range(1, rank - 1)]


def compose(inner: list[int], outer: list[int]) -> list[int]:
    """The perm of transpose(transpose(x, inner), outer)."""
    return [inner[i] for i in outer]


def inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _rank(v: Value | None) -> int | None:
    t = None if v is None else v.type
    return len(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _perm(node: Node) -> list[int] | None:
    """The explicit perm of a transpose node (None-perm means reversed axes)."""
    perm = node.attrs.get("perm")
    if perm is None:
        r = _rank(node.inputs[0])
        return None if r is None else list(range(r))[::-1]
    return [int(p) for p in perm]


def _is_output(v: Value) -> bool:
    return v.graph is not None and any(o is v for o in v.graph.outputs)


def _transpose(graph: Graph, x: Value, perm: list[int], provenance, *, before=None, after=None) -> Value:
    return graph.add_node("tensor.transpose", [x], {"perm": list(perm)}, provenance=provenance,
                          before=before, after=after).output


def replace_value(graph: Graph, old: Value, new: Value) -> bool:
    """Make readers of ``old`` read ``new``; a graph output keeps its name (``new`` takes it).
    Returns False (changing nothing) when ``new`` cannot take the name."""
    if _is_output(old):
        if new.producer is None or _is_output(new) or new.graph is not old.graph:
            return False
        name = old.name
        graph.rename(old, name + "_old")
        redirect(graph, old, new)
        graph.rename(new, name)
    else:
        redirect(graph, old, new)
    return True


# -- cancel-transposes ---------------------------------------------------------------------

def _anchored(t: Node, anchors: frozenset[str]) -> bool:
    """A layout adapter: an NCHW↔NHWC transpose right after or right before an anchor op."""
    if not anchors:
        return False
    r, perm = _rank(t.inputs[0]), _perm(t)
    if r is None or r < 3 or perm not in (to_last(r), to_first(r)):
        return False
    x = t.inputs[0]
    if x.producer is not None and x.producer.op in anchors:
        return True
    return any(u.node.op in anchors for u in t.output.uses)


def _compose_step(graph: Graph, t: Node, anchors) -> Node | None | bool:
    """transpose∘transpose → one transpose or nothing. Returns the node to revisit, True when
    the pair vanished, None when nothing changed."""
    inner = t.inputs[0].producer
    if inner is None or inner.op != "tensor.transpose" or _anchored(inner, anchors):
        return None
    p, q = _perm(inner), _perm(t)
    if p is None or q is None:
        return None
    r = compose(p, q)
    x = inner.inputs[0]
    mid = t.inputs[0]
    if r == list(range(len(r))):
        if not replace_value(graph, t.output, x):
            return None
        graph.erase_node(t)
        if not mid.uses and not _is_output(mid):
            graph.erase_node(inner)
        return True
    if len(mid.uses) != 1 or _is_output(mid):
        return None
    t.set_input(0, x)
    t.attrs["perm"] = r
    graph.erase_node(inner)
    return t


def _push_step(graph: Graph, t: Node, anchors) -> Node | None:
    """transpose → agnostic op  ⇒  agnostic op → transpose, when all the op's other inputs are
    the same transpose (used only there) or constants. Returns the new transpose node."""
    out = t.output
    if len(out.uses) == 0 or _is_output(out):
        return None
    u = out.uses[0].node
    if any(use.node is not u for use in out.uses) or (u.op not in AGNOSTIC_OPS and u.op not in AXIS_OPS):
        return None
    if len(u.outputs) != 1 or u.subgraphs():
        return None
    perm = _perm(t)
    rank = len(perm)
    if _rank(u.output) != rank:
        return None
    transposes, new_inputs = [], []
    for v in u.inputs:
        if v is None:
            new_inputs.append(None)
            continue
        p = v.producer
        if p is not None and p.op == "tensor.transpose" and _perm(p) == perm and not _anchored(p, anchors) \
                and not _is_output(v) and all(use.node is u for use in v.uses):
            transposes.append(p)
            new_inputs.append(p.inputs[0])
        elif v.const is not None and v.const.ndim <= rank and not (u.op in AXIS_OPS and v.const.ndim != rank):
            c = v.const.reshape((1,) * (rank - v.const.ndim) + v.const.shape)
            if c.size == 1:  # a scalar broadcasts identically either way
                new_inputs.append(v)
            else:
                new_inputs.append(graph.add_constant(np.ascontiguousarray(c.transpose(inverse(perm))),
                                                     name=v.name + "_t"))
        else:
            return None
    attrs_ = dict(u.attrs)
    if u.op in AXIS_OPS:
        attrs_["axis"] = perm[int(attrs_.get("axis", -1)) % rank]
    moved = graph.add_node(u.op, new_inputs, attrs_, provenance=u.provenance, before=u)
    new_t = graph.add_node("tensor.transpose", [moved.output], {"perm": perm},
                           provenance=merge_provenance(transposes), before=u)
    if not replace_value(graph, u.output, new_t.output):
        graph.erase_node(new_t)
        graph.erase_node(moved)
        erase_unused_constants(v for v in new_inputs if v is not None)
        return None
    old_consts = [v for v in u.inputs if v is not None and v.const is not None]
    graph.erase_node(u)
    for p in transposes:
        if p.graph is graph and not p.output.uses:
            graph.erase_node(p)
    erase_unused_constants(old_consts)
    return new_t


def cancel_transposes(graph: Graph, anchors: Iterable[str] = ()) -> bool:
    """Compose and push down transposes until none can move (see the module docstring)."""
    anchors = frozenset(anchors)
    changed = False
    for g in graphs_of(graph):
        work = [n for n in g.nodes if n.op == "tensor.transpose"]
        work.reverse()  # pop() visits them in graph order
        while work:
            t = work.pop()
            if t.graph is not g or t.op != "tensor.transpose" or _anchored(t, anchors) or _perm(t) is None:
                continue
            if _perm(t) == list(range(len(_perm(t)))) and replace_value(g, t.output, t.inputs[0]):
                g.erase_node(t)  # an identity transpose
                changed = True
                continue
            src = t.inputs[0]
            if src.const is not None and not _is_output(t.output):
                # a transposed constant (e.g. a weight adapter left without its anchor): fold it
                folded = g.add_constant(np.ascontiguousarray(src.const.transpose(_perm(t))),
                                        name=src.name + "_t")
                redirect(g, t.output, folded)
                g.erase_node(t)
                erase_unused_constants([src])
                changed = True
                continue
            inner = src.producer
            step = _compose_step(g, t, anchors)
            if step is True:
                changed = True
                _requeue(work, g, inner)  # it lost a reader: it may be pushable now
                continue
            if step is not None:
                changed = True
                work.append(step)
                continue
            moved = _push_step(g, t, anchors)
            if moved is not None:
                changed = True
                work.append(moved)
            # a transpose whose users are transposes: let them compose with it
            elif any(use.node.op == "tensor.transpose" for use in t.output.uses):
                composed = False
                for nxt in [use.node for use in t.output.uses]:
                    if nxt.op == "tensor.transpose" and nxt.graph is g and not _anchored(nxt, anchors) \
                            and t.graph is g and nxt.inputs[0] is t.output:
                        if _compose_step(g, nxt, anchors) is not None:
                            changed = composed = True
                            _requeue(work, g, nxt)
                if composed:
                    # t lost readers (or vanished): with a single reader left it may push now
                    _requeue(work, g, t)
    return changed


def _requeue(work: list, graph: Graph, node: Node | None) -> None:
    """Visit a transpose again (next) when a rewrite may have unblocked it."""
    if node is not None and node.graph is graph and node.op == "tensor.transpose":
        work.append(node)


@register_pass
@attrs.define
class CancelTransposes(Pass):
    """Compose transpose chains (dropping identities) and push transposes through elementwise ops."""

    name = "cancel-transposes"
    opt_level = 1
    #: Ops whose adjacent NCHW↔NHWC transposes are layout adapters to keep.
    anchors: tuple = ()

    def run(self, graph, ctx) -> bool:
        with rewriting(graph):
            return cancel_transposes(graph, self.anchors)


# -- convert-layout ------------------------------------------------------------------------

def _wrap(graph: Graph, node: Node, transpose_weights: bool) -> bool:
    """Give a channels-first op NHWC boundaries and adapters (outputs unchanged)."""
    x = node.inputs[0]
    rank = _rank(x)
    if rank is None or rank < 3 or _rank(node.outputs[0]) != rank:
        return False
    if any(o.uses or _is_output(o) for o in node.outputs[1:]):
        return False  # pool indices / BN training statistics: leave it as it is
    last, first, prov = to_last(rank), to_first(rank), node.provenance
    into = _transpose(graph, x, last, prov, before=node)                  # region boundary
    node.set_input(0, _transpose(graph, into, first, prov, before=node))  # adapter
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if transpose_weights and node.op == "nn.conv" and w is not None and w.const is not None \
            and w.const.ndim == rank:
        stored = graph.add_constant(np.ascontiguousarray(w.const.transpose(last)), name=w.name + "_ohwi")
        node.set_input(1, _transpose(graph, stored, first, prov, before=node))  # weight adapter
        erase_unused_constants([w])
    y = node.outputs[0]
    adapter = graph.add_node("tensor.transpose", [y], {"perm": last}, provenance=prov, after=node)
    back = graph.add_node("tensor.transpose", [adapter.output], {"perm": first}, provenance=prov,
                          after=adapter)                                  # region boundary
    if _is_output(y):
        name = y.name
        graph.rename(y, name + "_nchw")
        redirect(graph, y, back.output)
        graph.rename(back.output, name)
    else:
        redirect(graph, y, back.output)
    adapter.set_input(0, y)
    return True


@register_pass
@attrs.define
class ConvertLayout(Pass):
    """Make the activations between conv/pool/norm ops channels-last (NHWC), with adapters."""

    name = "convert-layout"
    opt_level = 3
    layout: str = "NHWC"
    #: Ops the target runs channels-last (empty: every op of LAYOUT_OPS).
    native: tuple = ()
    transpose_weights: bool = True

    def run(self, graph, ctx) -> bool:
        layout = str(self.layout).upper()
        if layout not in LAYOUTS:
            raise OptionError(f"convert-layout: unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if layout == "NCHW":
            return False  # qir's own layout: nothing to do
        native = frozenset(self.native) or LAYOUT_OPS
        changed = False
        with rewriting(graph):
            for g in graphs_of(graph):
                for node in list(g.nodes):
                    if node.op in native and node.graph is g:
                        changed |= _wrap(g, node, bool(self.transpose_weights))
            if changed:
                cancel_transposes(graph, native)
        return changed
