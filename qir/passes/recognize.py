"""Recognition of decomposed LayerNorm, GELU and scaled-dot-product attention, and the way back.

Exporters (torch, TF, older ONNX opsets) spell these as chains of elementary ops; the
``recognize-*`` passes replace such a chain by the one op that has ONNX's semantics
(nn.layer_normalization, nn.gelu, nn.attention), so targets can pick a fused kernel. The
``decompose-*`` passes turn those ops back into standard elementary ops computing the same values,
for targets (and ONNX opsets) that lack them.

Matched chains must be private: every intermediate value is read only inside the chain and is
not a graph output. The new node carries the merged provenance of every node it replaces and
takes over the name of the chain's final value.

Recognized forms (each commutative operand order is accepted):

- LayerNorm: ``d = x - ReduceMean(x)``, ``var = ReduceMean(d*d | d^2)``, ``n = d / Sqrt(var + eps)``
  (or ``d * Reciprocal(Sqrt(..))``), then optional ``* gamma`` and ``+ beta`` with constant
  gamma/beta; the reduced axes must be the trailing dims (keepdims=1). float32 and float64.
- GELU: ``x * 0.5 * (1 + Erf(x / sqrt 2))`` (or ``Erf(x * 1/sqrt 2)``) and the tanh form
  ``x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (x^3 as Pow(x, 3) or x*x*x),
  the product of x, 0.5 and the bracket in any association. float32 and float64.
- Attention: ``Softmax(MatMul(Q, Kᵀ) [* s | / c] [+ mask], axis=-1) @ V`` with Q, K, V
  of rank 4 ``[B, H, S, D]`` sharing B and H, or rank 3 ``[B, S, D]`` (one head), float32, an
  additive float mask whose last dim is the key length and that does not enlarge the scores.
  nn.attention then computes the same values, except that a query row whose mask is -inf
  everywhere gives zeros instead of NaN. Kᵀ may be any value: when it is a private Transpose
  (torch writes K [B, S, H, D] → Kᵀ [B, H, D, S] in one), K becomes one Transpose of its source
  with the composed perm (none when that is the identity); otherwise a Transpose of Kᵀ.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator

import attrs
import numpy as np

from qir.ir.graph import Graph, Node, Value, merge_provenance
from qir.ir.types import DType, TensorType
from qir.passes.registry import Pass, register_pass

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715
_FLOATS = (DType.FLOAT32, DType.FLOAT64)


# -- matching helpers ----------------------------------------------------------------------

def graphs_of(graph: Graph) -> Iterator[Graph]:
    """``graph`` and every subgraph under it."""
    yield graph
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            yield from graphs_of(sub)


_TREES: dict[int, list[Graph]] = {}


@contextmanager
def rewriting(graph: Graph):
    """Within it, ``redirect`` finds the graph tree's outputs from a list made once, not by
    walking every node per rewrite (Graph.replace_all_uses does that: O(n) per call)."""
    _TREES[id(graph)] = list(graphs_of(graph))
    try:
        yield
    finally:
        _TREES.pop(id(graph), None)


def redirect(graph: Graph, old: Value, new: Value) -> None:
    """Make every reader of ``old``, graph outputs (of subgraphs too) included, read ``new``."""
    graph.replace_all_uses(old, new, include_outputs=False)
    tree = _TREES.get(id(graph.root))
    for g in tree if tree is not None else graphs_of(graph.root):
        if any(v is old for v in g.outputs):
            g.outputs = [new if v is old else v for v in g.outputs]


def producer(v: Value | None, op: str) -> Node | None:
    """The node producing ``v`` if it is an ``op`` node with one output, else None."""
    if v is None or v.producer is None or v.producer.op != op or len(v.producer.outputs) != 1:
        return None
    return v.producer


def scalar(v: Value | None) -> float | None:
    """The value of a one-element float constant, else None."""
    if v is None or v.const is None or v.const.size != 1 or v.const.dtype.kind != "f":
        return None
    return float(v.const.reshape(-1)[0])


def close(a: float | None, b: float, rtol: float = 1e-5) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def other(node: Node, v: Value) -> Value | None:
    """The other input of a binary node one of whose inputs is ``v``."""
    a, b = node.inputs[:2]
    return b if a is v else a if b is v else None


def sole_user(v: Value) -> Node | None:
    """The only node reading ``v`` (possibly at several inputs), else None."""
    users = v.users
    return users[0] if len(users) == 1 and not _is_output(v) else None


def _is_output(v: Value) -> bool:
    return v.graph is not None and any(o is v for o in v.graph.outputs)


def dtype_of(v: Value) -> DType | None:
    return v.type.dtype if isinstance(v.type, TensorType) else None


def private(nodes: Iterable[Node], root: Node) -> bool:
    """Every output of ``nodes`` but the root's is read only by ``nodes`` and is no graph output."""
    nodes = set(nodes)
    for n in nodes:
        if n is root:
            continue
        for out in n.outputs:
            if _is_output(out) or any(u.node not in nodes for u in out.uses):
                return False
    return True


def replace_chain(graph: Graph, nodes: list[Node], root: Node, op: str, inputs: list,
                  attrs_: dict, num_outputs: int = 1) -> Node:
    """Replace the chain ``nodes`` (ending in ``root``) by one ``op`` node placed at the root,
    which takes over the root value's name and merges the chain's provenance."""
    old = root.output
    name = old.name
    pos = {id(n): i for i, n in enumerate(graph.nodes)}
    nodes = sorted(nodes, key=lambda n: pos[id(n)])  # provenance in source order
    consts = [v for n in nodes for v in n.inputs if v is not None and v.const is not None]
    graph.rename(old, name + "_replaced")  # frees the name for the new value
    new = graph.add_node(op, inputs, attrs_, output_names=[name], num_outputs=num_outputs,
                         provenance=merge_provenance(nodes), before=root)
    redirect(graph, old, new.outputs[0])
    erase_dead(graph, nodes)
    erase_unused_constants(consts)
    return new


def erase_unused_constants(values: Iterable[Value]) -> None:
    """Drop the constants among ``values`` that nothing reads any more."""
    for c in {id(v): v for v in values}.values():
        g = c.graph
        if not c.uses and g is not None and g.constants.get(c.name) is c and not _is_output(c):
            g.erase_constant(c)


def f32_float(x: float) -> float:
    """``x`` rounded to float32 and back, spelled shortest (ONNX float attributes are float32)."""
    return float(str(np.float32(x)))


def erase_dead(graph: Graph, nodes: Iterable[Node]) -> None:
    """Erase ``nodes`` (all of whose outputs are unused once the others are gone)."""
    pending = [n for n in nodes if n.graph is graph]
    while pending:
        rest = []
        for n in pending:
            if all(not o.uses and not _is_output(o) for o in n.outputs):
                graph.erase_node(n)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise AssertionError(f"cannot erase {[n.name for n in rest]}: still used")
        pending = rest


def _const_axes(node: Node, rank: int) -> tuple[int, ...] | None:
    """Non-negative sorted axes of a reduce node with a constant axes input, else None."""
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const is None:
        return None
    return tuple(sorted(int(a) % rank for a in node.inputs[1].const.reshape(-1)))


# -- LayerNorm -----------------------------------------------------------------------------

def _match_layernorm(sub: Node):
    """From ``d = x - mean(x)``: (nodes, root, x, axis, eps, gamma, beta) or None."""
    if sub.op != "elementwise.sub":
        return None
    x, mean_v = sub.inputs
    mean = producer(mean_v, "reduce.mean")
    if mean is None or mean.inputs[0] is not x or dtype_of(x) not in _FLOATS:
        return None
    shape = x.type.shape
    if shape is None or mean.attrs.get("keepdims", 1) != 1:
        return None
    rank = len(shape)
    axes = _const_axes(mean, rank)
    if not axes or axes != tuple(range(rank - len(axes), rank)):
        return None
    d = sub.output
    users = d.users
    if len(users) != 2:
        return None
    sq = next((u for u in users if (u.op == "elementwise.mul" and u.inputs[0] is d and u.inputs[1] is d)
               or (u.op == "elementwise.pow" and u.inputs[0] is d and close(scalar(u.inputs[1]), 2.0))), None)
    div = next((u for u in users if u is not sq), None)
    if sq is None or div is None:
        return None
    var = sole_user(sq.output)
    if var is None or var.op != "reduce.mean" or _const_axes(var, rank) != axes or var.attrs.get("keepdims", 1) != 1:
        return None
    add = sole_user(var.output)
    if add is None or add.op != "elementwise.add":
        return None
    eps = scalar(other(add, var.output))
    sqrt = sole_user(add.output)
    if eps is None or sqrt is None or sqrt.op != "elementwise.sqrt":
        return None
    nodes = [mean, sub, sq, var, add, sqrt]
    if div.op == "elementwise.div" and div.inputs == (d, sqrt.output):
        nodes.append(div)
    elif div.op == "elementwise.mul" and other(div, d) is not None:
        rec = producer(other(div, d), "elementwise.reciprocal")
        if rec is None or rec.inputs[0] is not sqrt.output:
            return None
        nodes += [rec, div]
    else:
        return None
    root, gamma, beta = div, None, None
    nxt = sole_user(root.output)
    if nxt is not None and nxt.op == "elementwise.mul" and _affine_param(other(nxt, root.output), shape, axes):
        gamma, root = other(nxt, root.output), nxt
        nodes.append(nxt)
        nxt = sole_user(root.output)
    if nxt is not None and nxt.op == "elementwise.add" and _affine_param(other(nxt, root.output), shape, axes):
        beta, root = other(nxt, root.output), nxt
        nodes.append(nxt)
    if not private(nodes, root):
        return None
    return nodes, root, x, rank - len(axes), eps, gamma, beta


def _affine_param(v: Value | None, shape, axes) -> bool:
    """A constant that broadcasts over the normalized dims only (LayerNorm's scale/bias)."""
    if v is None or v.const is None or v.const.dtype.kind != "f":
        return False
    norm = shape[axes[0]:]
    c = v.const.shape
    if len(c) > len(shape) or any(d != 1 for d in c[:max(0, len(c) - len(norm))]):
        return False
    tail = c[max(0, len(c) - len(norm)):]
    return all(isinstance(n, int) for n in norm) and all(
        t == 1 or t == n for t, n in zip(tail, norm[len(norm) - len(tail):]))


def _normalized_param(graph: Graph, v: Value | None, x: Value, axis: int, fill: float) -> Value:
    """gamma/beta as a constant of exactly the normalized shape, in x's dtype."""
    shape = tuple(x.type.shape[axis:])
    dt = x.type.dtype.numpy
    if v is None:
        return graph.add_constant(np.full(shape, fill, dtype=dt), name=f"ln_{'scale' if fill else 'bias'}")
    arr = np.broadcast_to(v.const.reshape(v.const.shape[-len(shape):] if v.const.ndim >= len(shape)
                                          else (1,) * (len(shape) - v.const.ndim) + v.const.shape), shape)
    if arr.shape == v.const.shape and v.const.dtype == dt:
        return v
    return graph.add_constant(np.ascontiguousarray(arr, dtype=dt), name=v.name)


@register_pass
@attrs.define
class RecognizeLayerNorm(Pass):
    """Replace ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add] chains by nn.layer_normalization."""

    name = "recognize-layernorm"
    opt_level = 2

    def run(self, graph, ctx) -> bool:
        with rewriting(graph):
            return self._run(graph)

    def _run(self, graph) -> bool:
        changed = False
        for g in graphs_of(graph):
            for node in list(g.nodes):
                if node.graph is not g:
                    continue
                m = _match_layernorm(node)
                if m is None:
                    continue
                nodes, root, x, axis, eps, gamma, beta = m
                scale = _normalized_param(g, gamma, x, axis, 1.0)
                bias = _normalized_param(g, beta, x, axis, 0.0)
                stash = 11 if x.type.dtype is DType.FLOAT64 else 1
                replace_chain(g, nodes, root, "nn.layer_normalization", [x, scale, bias],
                              {"axis": axis, "epsilon": f32_float(eps), "stash_type": stash})
                changed = True
        return changed


# -- GELU ----------------------------------------------------------------------------------

def _match_half_x_product(c: Value, x: Value):
    """The product ``x * 0.5 * c`` in any association, from the bracket ``c``: (nodes, root)."""
    m1 = sole_user(c)
    if m1 is None or m1.op != "elementwise.mul":
        return None
    o = other(m1, c)
    if o is x or close(scalar(o), 0.5):
        m2 = sole_user(m1.output)
        want = (lambda v: close(scalar(v), 0.5)) if o is x else (lambda v: v is x)
        if m2 is None or m2.op != "elementwise.mul" or not want(other(m2, m1.output)):
            return None
        return [m1, m2], m2
    half = producer(o, "elementwise.mul")
    if half is not None and x in half.inputs and close(scalar(other(half, x)), 0.5):
        return [half, m1], m1
    return None


def _match_gelu(node: Node):
    """From the Erf or Tanh node: (nodes, root, x, approximate) or None."""
    if node.op == "elementwise.erf":
        a = node.inputs[0]
        pre = producer(a, "elementwise.div") or producer(a, "elementwise.mul")
        if pre is None:
            return None
        x = pre.inputs[0]
        k = scalar(pre.inputs[1])
        if pre.op == "elementwise.mul" and not close(k, 1 / SQRT2):
            x, k = pre.inputs[1], scalar(pre.inputs[0])
            if not close(k, 1 / SQRT2):
                return None
        elif pre.op == "elementwise.div" and not close(k, SQRT2):
            return None
        head, approximate = [pre, node], "none"
    elif node.op == "nn.tanh":
        found = _match_tanh_inner(node.inputs[0])
        if found is None:
            return None
        x, inner = found
        head, approximate = inner + [node], "tanh"
    else:
        return None
    if dtype_of(x) not in _FLOATS:
        return None
    add = sole_user(node.output)
    if add is None or add.op != "elementwise.add" or not close(scalar(other(add, node.output)), 1.0):
        return None
    tail = _match_half_x_product(add.output, x)
    if tail is None:
        return None
    nodes = head + [add] + tail[0]
    root = tail[1]
    if root.output.type != x.type or not private(nodes, root):
        return None
    return nodes, root, x, approximate


def _match_tanh_inner(v: Value):
    """``sqrt(2/pi) * (x + 0.044715 * x^3)``: (x, nodes) or None."""
    outer = producer(v, "elementwise.mul")
    if outer is None:
        return None
    u = next((i for i in outer.inputs if not close(scalar(i), SQRT_2_OVER_PI)), None)
    if u is None or not any(close(scalar(i), SQRT_2_OVER_PI) for i in outer.inputs):
        return None
    add = producer(u, "elementwise.add")
    if add is None:
        return None
    for x, t in (add.inputs, add.inputs[::-1]):
        mul = producer(t, "elementwise.mul")
        if mul is None:
            continue
        cube_v = next((i for i in mul.inputs if not close(scalar(i), GELU_CUBIC)), None)
        if cube_v is None or not any(close(scalar(i), GELU_CUBIC) for i in mul.inputs):
            continue
        cube = _match_cube(cube_v, x)
        if cube is not None:
            return x, cube + [mul, add, outer]
    return None


def _match_cube(v: Value, x: Value) -> list[Node] | None:
    """``x^3`` as Pow(x, 3) or (x*x)*x / x*(x*x): its nodes, else None."""
    p = producer(v, "elementwise.pow")
    if p is not None:
        return [p] if p.inputs[0] is x and close(scalar(p.inputs[1]), 3.0) else None
    m = producer(v, "elementwise.mul")
    if m is None or x not in m.inputs:
        return None
    sq = producer(other(m, x), "elementwise.mul")
    if sq is not None and sq.inputs[0] is x and sq.inputs[1] is x:
        return [sq, m]
    return None


@register_pass
@attrs.define
class RecognizeGelu(Pass):
    """Replace x*0.5*(1+erf(x/sqrt2)) and its tanh approximation by nn.gelu."""

    name = "recognize-gelu"
    opt_level = 2

    def run(self, graph, ctx) -> bool:
        with rewriting(graph):
            return self._run(graph)

    def _run(self, graph) -> bool:
        changed = False
        for g in graphs_of(graph):
            for node in list(g.nodes):
                if node.graph is not g:
                    continue
                m = _match_gelu(node)
                if m is None:
                    continue
                nodes, root, x, approximate = m
                replace_chain(g, nodes, root, "nn.gelu", [x], {"approximate": approximate})
                changed = True
        return changed


# -- attention -----------------------------------------------------------------------------

def _dims_equal(a, b) -> bool:
    return a == b and not (isinstance(a, str) and a == "?")


def _match_scores(s: Value, rank: int):
    """``MatMul(Q, Kᵀ) [* s | / c]``: (nodes, q, (source, perm), scale) or None, where
    K = transpose(source, perm)."""
    nodes, scale = [], 1.0
    for op in ("elementwise.mul", "elementwise.div"):
        sc = producer(s, op)
        if sc is None:
            continue
        candidates = sc.inputs[:1] if op == "elementwise.div" else sc.inputs
        mm_v = next((i for i in candidates if producer(i, "linalg.matmul") is not None), None)
        k = scalar(other(sc, mm_v)) if mm_v is not None else None
        if k is None or k == 0 or not math.isfinite(k):
            return None
        scale, s = (k if op == "elementwise.mul" else 1.0 / k), mm_v
        nodes.append(sc)
        break
    qk = producer(s, "linalg.matmul")
    if qk is None:
        return None
    q, kt = qk.inputs
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    tr = producer(kt, "tensor.transpose")
    if tr is not None and tr.attrs.get("perm") is not None and len(kt.uses) == 1 and not _is_output(kt):
        # K = transpose(Kᵀ, swap) = transpose(src, perm∘swap): often the heads-first perm
        perm = [int(p) for p in tr.attrs["perm"]]
        return nodes + [qk, tr], q, (tr.inputs[0], [perm[i] for i in swap]), scale
    return nodes + [qk], q, (kt, swap), scale


class _KeyView:
    """K as ``transpose(source, perm)``, before that transpose exists: its type for the checks."""

    def __init__(self, source: Value, perm: list[int]):
        self.source, self.perm = source, perm
        t = source.type
        shape = getattr(t, "shape", None)
        self.type = t if shape is None or len(shape) != len(perm) else \
            TensorType(t.dtype, tuple(shape[p] for p in perm))

    @property
    def identity(self) -> bool:
        return self.perm == list(range(len(self.perm)))


def _match_attention(node: Node):
    """From the Softmax: (nodes, root, q, k, v, mask, scale, rank) or None."""
    if node.op != "nn.softmax":
        return None
    s = node.inputs[0]
    if dtype_of(s) is not DType.FLOAT32 or s.type.shape is None:
        return None
    rank = len(s.type.shape)
    if rank not in (3, 4) or node.attrs.get("axis", -1) not in (-1, rank - 1):
        return None
    nodes, mask, found = [node], None, _match_scores(s, rank)
    add = producer(s, "elementwise.add")
    if found is None and add is not None:
        for sv, mk in (add.inputs, add.inputs[::-1]):
            found = _match_scores(sv, rank)
            if found is not None:
                mask = mk
                nodes.append(add)
                break
    if found is None:
        return None
    score_nodes, q, (k_src, k_perm), scale = found
    nodes += score_nodes
    k = _KeyView(k_src, k_perm)
    out = sole_user(node.output)
    if out is None or out.op != "linalg.matmul" or out.inputs[0] is not node.output or out.inputs[1] is node.output:
        return None
    v = out.inputs[1]
    nodes.append(out)
    if not _attention_shapes(q, k, v, mask, rank) or not private(nodes, out):
        return None
    if out.output.type.shape is None or len(out.output.type.shape) != rank:
        return None
    return nodes, out, q, k, v, mask, scale, rank


def _attention_shapes(q: Value, k: Value, v: Value, mask: Value | None, rank: int) -> bool:
    """Shapes for which nn.attention computes exactly the matmul-softmax-matmul chain."""
    shapes = [getattr(t.type, "shape", None) for t in (q, k, v)]
    if any(sh is None or len(sh) != rank for sh in shapes) or any(dtype_of(t) is not DType.FLOAT32 for t in (q, k, v)):
        return False
    qs, ks, vs = shapes
    batch = rank - 2  # leading (batch[, heads]) dims must agree exactly: no broadcasting
    if not all(_dims_equal(a, b) and _dims_equal(b, c) for a, b, c in zip(qs[:batch], ks[:batch], vs[:batch])):
        return False
    if not (_dims_equal(qs[-1], ks[-1]) and _dims_equal(ks[-2], vs[-2])):
        return False
    if mask is None:
        return True
    ms = getattr(mask.type, "shape", None)
    if dtype_of(mask) is not DType.FLOAT32 or ms is None or not ms or not _dims_equal(ms[-1], ks[-2]):
        return False
    scores = tuple(qs[:-1]) + (ks[-2],)
    if len(ms) > rank or (rank == 3 and len(ms) == 3 and ms[0] != 1):
        return False  # rank 3 becomes [B, 1, S, S] inside nn.attention: a batch dim would misalign
    return all(m == 1 or _dims_equal(m, d) for m, d in zip(ms[::-1], scores[::-1]))


@register_pass
@attrs.define
class RecognizeAttention(Pass):
    """Replace Softmax(Q·Kᵀ·scale + mask)·V chains by nn.attention."""

    name = "recognize-attention"
    opt_level = 2

    def run(self, graph, ctx) -> bool:
        with rewriting(graph):
            return self._run(graph)

    def _run(self, graph) -> bool:
        changed = False
        for g in graphs_of(graph):
            for node in list(g.nodes):
                if node.graph is not g:
                    continue
                m = _match_attention(node)
                if m is None:
                    continue
                nodes, root, q, kv, v, mask, scale, rank = m
                k = kv.source
                if not kv.identity:
                    k = g.add_node("tensor.transpose", [kv.source], {"perm": kv.perm}, before=root,
                                   provenance=merge_provenance(n for n in nodes if n.op == "tensor.transpose")
                                   or merge_provenance(nodes)).output
                attrs_ = {"scale": f32_float(scale)}
                if rank == 3:
                    attrs_.update(q_num_heads=1, kv_num_heads=1)
                inputs = [q, k, v] + ([mask] if mask is not None else [])
                replace_chain(g, nodes, root, "nn.attention", inputs, attrs_)
                changed = True
        return changed


# -- decompositions ------------------------------------------------------------------------

class _Emitter:
    """Adds the nodes of a decomposition before ``anchor`` with the anchor's provenance."""

    def __init__(self, graph: Graph, anchor: Node):
        self.graph, self.anchor = graph, anchor

    def __call__(self, op: str, inputs: list, attrs_: dict | None = None) -> Value:
        return self.graph.add_node(op, inputs, attrs_, provenance=self.anchor.provenance,
                                   before=self.anchor, num_outputs=1).output

    def const(self, value, dtype) -> Value:
        return self.graph.add_constant(np.asarray(value, dtype=dtype))

    def cast(self, v: Value, dt: DType) -> Value:
        return v if dtype_of(v) is dt else self("elementwise.cast", [v], {"to": dt})


def finish_decomposition(graph: Graph, node: Node, result: Value) -> None:
    """Make ``result`` replace the node's first output (keeping its name) and erase the node."""
    old = node.outputs[0]
    name = old.name
    graph.rename(old, name + "_decomposed")
    redirect(graph, old, result)
    graph.rename(result, name)
    graph.erase_node(node)


def _only_first_output_used(node: Node) -> bool:
    return all(not o.uses and not _is_output(o) for o in node.outputs[1:])


def _decompose_layernorm(graph: Graph, node: Node) -> bool:
    x = node.inputs[0]
    shape = getattr(x.type, "shape", None)
    if shape is None or not _only_first_output_used(node) or dtype_of(x) is None or not dtype_of(x).is_float:
        return False
    a = get_attrs(node)
    rank = len(shape)
    axis = a["axis"] % rank
    sd = DType.FLOAT64 if a["stash_type"] == 11 else DType.FLOAT32
    e = _Emitter(graph, node)
    axes = graph.add_constant(np.arange(axis, rank, dtype=np.int64))
    xf = e.cast(x, sd)
    mean = e("reduce.mean", [xf, axes], {"keepdims": 1})
    d = e("elementwise.sub", [xf, mean])
    var = e("reduce.mean", [e("elementwise.mul", [d, d]), axes], {"keepdims": 1})
    std = e("elementwise.sqrt", [e("elementwise.add", [var, e.const(a["epsilon"], sd.numpy)])])
    y = e.cast(e.cast(e("elementwise.div", [d, std]), x.type.dtype), sd)
    y = e("elementwise.mul", [y, e.cast(node.inputs[1], sd)])
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        y = e("elementwise.add", [y, e.cast(node.inputs[2], sd)])
    finish_decomposition(graph, node, e.cast(y, x.type.dtype))
    return True


def _decompose_gelu(graph: Graph, node: Node) -> bool:
    x = node.inputs[0]
    dt = dtype_of(x)
    if dt is None or not dt.is_float:
        return False
    approximate = get_attrs(node)["approximate"]
    if approximate not in ("none", "tanh"):
        return False
    wd = DType.FLOAT64 if dt is DType.FLOAT64 else DType.FLOAT32  # nn.gelu's compute dtype
    e = _Emitter(graph, node)
    c = lambda value: e.const(value, wd.numpy)  # noqa: E731
    xf = e.cast(x, wd)
    if approximate == "tanh":
        cube = e("elementwise.pow", [xf, c(3.0)])
        t = e("elementwise.add", [xf, e("elementwise.mul", [c(GELU_CUBIC), cube])])
        inner = e("elementwise.mul", [c(SQRT_2_OVER_PI), t])
        bracket = e("elementwise.add", [c(1.0), e("nn.tanh", [inner])])
    else:
        bracket = e("elementwise.add", [c(1.0), e("elementwise.erf", [e("elementwise.div", [xf, c(SQRT2)])])])
    y = e("elementwise.mul", [e("elementwise.mul", [c(0.5), xf]), bracket])
    finish_decomposition(graph, node, e.cast(y, dt))
    return True


def _decompose_attention(graph: Graph, node: Node) -> bool:
    """Plain attention only: no KV cache, causal/window masks, soft-cap or head grouping."""
    a = get_attrs(node)
    ins = list(node.inputs) + [None] * (7 - len(node.inputs))
    q, k, v, mask = ins[:4]
    if any(i is not None for i in ins[4:]) or not _only_first_output_used(node):
        return False
    if a["is_causal"] or a["softcap"] or a["left_window_size"] >= 0 or a["right_window_size"] >= 0 \
            or a["softmax_precision"] is not None:
        return False
    rank = len(getattr(q.type, "shape", None) or ())
    if rank == 3 and not (a["q_num_heads"] == 1 and a["kv_num_heads"] == 1):
        return False
    if not _attention_shapes(q, k, v, mask, rank):
        return False
    scale = a["scale"]
    if scale is None:
        d = q.type.shape[-1]
        if not isinstance(d, int):
            return False
        scale = 1 / math.sqrt(d)
    e = _Emitter(graph, node)
    kt = e("tensor.transpose", [k], {"perm": list(range(rank - 2)) + [rank - 1, rank - 2]})
    s = e("elementwise.mul", [e("linalg.matmul", [q, kt]), e.const(scale, np.float32)])
    if mask is not None:
        s = e("elementwise.add", [s, mask])
    y = e("linalg.matmul", [e("nn.softmax", [s], {"axis": -1}), v])
    finish_decomposition(graph, node, y)
    return True


def get_attrs(node: Node) -> dict:
    from qir.ir.opdef import get_op

    return get_op(node.op).resolve_attrs(node.attrs)


def _decompose_all(graph: Graph, op: str, fn) -> bool:
    changed = False
    with rewriting(graph):
        for g in graphs_of(graph):
            for node in list(g.nodes):
                if node.op == op and node.graph is g:
                    changed |= fn(g, node)
    return changed


@register_pass
@attrs.define
class DecomposeLayerNorm(Pass):
    """Expand nn.layer_normalization into ReduceMean/Sub/Mul/Add/Sqrt/Div/Mul/Add."""

    name = "decompose-layernorm"
    opt_level = 0

    def run(self, graph, ctx) -> bool:
        return _decompose_all(graph, "nn.layer_normalization", _decompose_layernorm)


@register_pass
@attrs.define
class DecomposeGelu(Pass):
    """Expand nn.gelu into Erf (or Tanh) arithmetic."""

    name = "decompose-gelu"
    opt_level = 0

    def run(self, graph, ctx) -> bool:
        return _decompose_all(graph, "nn.gelu", _decompose_gelu)


@register_pass
@attrs.define
class DecomposeAttention(Pass):
    """Expand plain nn.attention into Transpose/MatMul/Mul/Add/Softmax/MatMul."""

    name = "decompose-attention"
    opt_level = 0

    def run(self, graph, ctx) -> bool:
        return _decompose_all(graph, "nn.attention", _decompose_attention)
