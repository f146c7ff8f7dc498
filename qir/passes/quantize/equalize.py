"""Cross-layer equalization (CLE; Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", as AIMET's cross-layer scaling does it).

Per-channel weight ranges differ wildly between the output channels of one layer (after
BatchNorm folding especially); one per-tensor scale, or even per-channel weights feeding a
per-tensor activation, then wastes most of the integer grid. For two consecutive layers

    y = L2(h(L1(x)))          with h positively homogeneous per channel: h(x / s) = h(x) / s

output channel i of L1 (weights row and bias) can be divided by any s_i > 0 and input channel i
of L2 multiplied by s_i without changing y. With r1_i the range (max |w|) of L1's output channel
i and r2_i that of L2's input channel i, s_i = sqrt(r1_i · r2_i) / r2_i makes both ranges
sqrt(r1_i · r2_i). A depthwise-separable block L0 → dw → L2 (the depthwise conv, channel
multiplier 1, sits on both sides) is solved in closed form: all three ranges become the geometric
mean (r0 · r_dw · r2)^(1/3) — the fixpoint pairwise equalization would only approach. A layer
belongs to the set before it (as consumer) and the set after it (as producer), so the sets are
revisited in rounds until no scale moves by more than a relative 1e-6 (a chain of depthwise
blocks takes tens of rounds; each round is a few numpy reductions per layer).

What may sit between the two layers (each tensor on the way with exactly one reader and no graph
output): relu, leaky_relu and prelu (all exactly positively homogeneous), clip(0, +inf) (a relu),
max/average pooling, global pooling, identity, and flatten / reshape to [N, -1] (a channel then
spans H·W features of a following gemm). Clip with a finite bound (ReLU6) is not homogeneous:
``clip(x / s, 0, 6) != clip(x, 0, 6) / s``; such chains are skipped unless ``replace_relu6``
asks for AIMET's behaviour (the clip becomes a relu: the float model changes wherever an
activation exceeded the bound). Layers: conv (grouped and depthwise too; ``nn.conv`` /
``fused.conv`` with activation none/relu/leaky_relu and no residual when it is the producer),
gemm (``linalg.gemm`` / ``fused.gemm``, transA = 0 when it is the consumer) and matmul with a
constant 2-D right side; weights (and biases) must be constants.

Weights are never mutated: every changed weight or bias becomes a new constant
(``<old name>_cle``) and the old one is erased once unused. Nodes keep their names and provenance.
"""

from __future__ import annotations

import attrs
import numpy as np

from qir.ir.graph import Graph, Node, Value
from qir.ir.ops.fused import activation_of
from qir.passes.registry import Pass, register_pass
from qir.passes.cleanup import graph_tree

__all__ = ["EqualizeCrossLayer", "equalize_cross_layer"]

_CONVS = ("nn.conv", "fused.conv")
_GEMMS = ("linalg.gemm", "fused.gemm")
#: Channel-preserving ops that commute with a positive per-channel scale along axis 1.
_POOLS = ("nn.max_pool", "nn.average_pool", "nn.global_average_pool", "nn.global_max_pool")
#: Ranges below this count as a dead channel: it keeps scale 1 (no division by zero).
_TINY = 1e-30


@register_pass
@attrs.define
class EqualizeCrossLayer(Pass):
    """Cross-layer equalization: rescale channels between consecutive convs/gemms so that their
    per-channel weight ranges match (outputs unchanged; for quantization, Nagel et al. 2019)."""

    name = "equalize-cross-layer"
    opt_level = 3  # not in any standard pipeline: quantization asks for it (Config.cle)
    max_rounds: int = 100
    tolerance: float = 1e-6
    replace_relu6: bool = False

    def run(self, graph: Graph, ctx) -> bool:
        return equalize_cross_layer(graph, max_rounds=self.max_rounds, tolerance=self.tolerance,
                                    replace_relu6=self.replace_relu6) > 0


def equalize_cross_layer(graph: Graph, *, max_rounds: int = 100, tolerance: float = 1e-6,
                         replace_relu6: bool = False) -> int:
    """Equalize every chain of ``graph`` (and its subgraphs) in place; returns the number of layer
    pairs whose shared channels were rescaled (a depthwise-separable triple counts as two).

    Rounds over all sets repeat until no scale moves by more than ``tolerance`` (relative) or
    ``max_rounds`` is reached. ``replace_relu6`` turns clip(0, c) activations inside chains into
    relu first, as AIMET does (this changes the float model; off by default).
    """
    pairs = 0
    for g in graph_tree(graph):
        sets = _find_sets(g, replace_relu6)
        if not sets:
            continue
        if replace_relu6:
            for s in sets:
                for act in s.relu6:
                    _to_relu(g, act)
        weights = _Weights()
        for _ in range(max(1, max_rounds)):
            moved = max(_equalize_set(s, weights) for s in sets)
            if moved <= tolerance:
                break
        weights.write_back(g)
        pairs += sum(len(s.layers) - 1 for s in sets)
    return pairs


# -- layers: how weights map to channels ---------------------------------------------------

def _const_float(v: Value | None) -> np.ndarray | None:
    if v is None or v.const is None:
        return None
    a = v.const
    return a if a.dtype.kind == "f" else None


def _layer_kind(node: Node) -> str | None:
    """"conv", "gemm" or "matmul" when ``node`` is a layer with constant float weights."""
    w = _const_float(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None
    if node.op in _CONVS and w.ndim >= 3:
        b = node.inputs[2] if len(node.inputs) > 2 else None
        return "conv" if b is None or _const_float(b) is not None else None
    if node.op in _GEMMS and w.ndim == 2:
        c = node.inputs[2] if len(node.inputs) > 2 else None
        return "gemm" if c is None or _const_float(c) is not None else None
    if node.op == "linalg.matmul" and w.ndim == 2:
        return "matmul"
    return None


def _attr(node: Node, key: str, default):
    return node.attrs.get(key, default)


def _out_axis(node: Node, kind: str) -> int:
    """The axis of the weight array that indexes output channels."""
    if kind == "conv":
        return 0
    if kind == "gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return 1  # matmul: B is [K, N]


def _homogeneous(name: str, params) -> bool | str:
    """True when epilogue activation ``name`` commutes with positive scales; "relu6" when it is
    clip(0, c) (homogeneous only once turned into relu)."""
    if name in ("none", "relu", "leaky_relu"):
        return True
    if name == "clip":
        lo, hi = (tuple(params) + (-np.inf, np.inf))[:2]
        if hi == np.inf and lo in (0.0, -np.inf):
            return True
        if lo == 0.0 and np.isfinite(hi) and hi > 0:
            return "relu6"
    return False


def _producer_ok(node: Node, kind: str, replace_relu6: bool) -> tuple[bool, Node | None]:
    """Whether ``node``'s output channels may be scaled; the clip(0, c) node to turn into relu."""
    if node.op == "fused.conv":
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            return False, None  # act(conv + residual): the residual would not scale
    if node.op in ("fused.conv", "fused.gemm"):
        h = _homogeneous(node.attrs.get("activation", "none"), node.attrs.get("activation_params", ()))
        if h == "relu6":
            return replace_relu6, node
        return bool(h), None
    return True, None


def _transparent(node: Node, axis: int, replace_relu6: bool):
    """How ``node`` (reading the chain tensor at input 0) passes channels on: None when it does
    not commute with per-channel scaling; else (new channel axis, features-per-channel factor,
    clip node to turn into relu or None)."""
    if node.op in ("nn.relu", "nn.leaky_relu", "tensor.identity"):
        return axis, 1, None
    if node.op == "nn.prelu":
        return (axis, 1, None) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if node.op == "elementwise.clip":
        act = activation_of(node)
        if act is None:
            return None
        h = _homogeneous(*act)
        if h == "relu6":
            return (axis, 1, node) if replace_relu6 else None
        return (axis, 1, None) if h else None
    if node.op in _POOLS and axis == 1 and len(node.outputs) == 1:
        return axis, 1, None
    if node.op in ("tensor.flatten", "tensor.reshape") and axis == 1:
        shape, out = _shape(node.inputs[0]), _shape(node.outputs[0])
        if shape is None or out is None or len(shape) < 2 or len(out) != 2:
            return None
        if node.op == "tensor.flatten" and _attr(node, "axis", 1) != 1:
            return None
        rest = shape[1:]
        if not all(_static(d) for d in rest) or out[1] != int(np.prod(rest)) or out[0] != shape[0]:
            return None  # [N, C, *S] → [N, C·prod(S)] only
        return 1, int(np.prod(rest[1:])), None
    return None


def _static(d) -> bool:
    return isinstance(d, (int, np.integer))


def _shape(v: Value | None) -> tuple | None:
    """The value's shape (dims may be symbolic), or None when its rank is unknown."""
    shape = getattr(getattr(v, "type", None), "shape", None)
    return None if shape is None else tuple(int(d) if _static(d) else d for d in shape)


def _depthwise(node: Node, kind: str, w: np.ndarray) -> bool:
    """A depthwise conv with channel multiplier 1: input channel i is output channel i."""
    return kind == "conv" and w.shape[1] == 1 and int(_attr(node, "group", 1)) == w.shape[0]


# -- finding the sets ----------------------------------------------------------------------

@attrs.define
class _Set:
    """Layers equalized together: a producer, depthwise middles, a consumer; ``features`` is
    how many input features of the last layer each channel feeds (flatten in between)."""

    layers: list[Node]
    kinds: list[str]
    features: int = 1
    relu6: list[Node] = attrs.field(factory=list)


def _follow(g: Graph, producer: Node, kind: str, replace_relu6: bool):
    """The consumer layer that ``producer``'s channels reach through transparent ops, or None.

    Returns (consumer, its kind, features per channel, clip nodes to make relu)."""
    ok, relu6 = _producer_ok(producer, kind, replace_relu6)
    if not ok:
        return None
    relu6s = [relu6] if relu6 is not None else []
    v = producer.outputs[0]
    out_shape = _shape(v)
    axis = 1 if kind == "conv" else (len(out_shape) - 1 if out_shape else -1)
    features = 1
    outputs = {id(o) for o in g.outputs}
    while True:
        if len(v.uses) != 1 or id(v) in outputs:
            return None
        user, index = v.uses[0]
        if index != 0 or user.graph is not g:
            return None
        ukind = _layer_kind(user)
        if ukind is not None:
            return (user, ukind, features, relu6s) if _consumer_ok(user, ukind, v, axis, features) else None
        passed = _transparent(user, axis, replace_relu6)
        if passed is None or len(user.outputs) != 1:
            return None
        axis, factor, clip = passed
        features *= factor
        if clip is not None:
            relu6s.append(clip)
        v = user.outputs[0]


def _consumer_ok(node: Node, kind: str, v: Value, axis: int, features: int) -> bool:
    shape = _shape(v)
    if kind == "conv":
        return axis == 1 and features == 1
    if kind == "gemm" and _attr(node, "transA", 0):
        return False  # A' = A^T: the contraction runs over the batch axis
    if shape is None or axis != len(shape) - 1:
        return False
    w = node.inputs[1].const
    k = w.shape[1] if kind == "gemm" and _attr(node, "transB", 0) else w.shape[0]
    return k == shape[-1] and shape[-1] % features == 0


def _find_sets(g: Graph, replace_relu6: bool) -> list[_Set]:
    """Pairs producer → consumer, merged through depthwise convs into longer sets."""
    pairs: dict[int, tuple] = {}  # id(producer) → (producer, kind, consumer, ckind, features, relu6)
    for node in g.nodes:
        kind = _layer_kind(node)
        if kind is None:
            continue
        found = _follow(g, node, kind, replace_relu6)
        if found is not None:
            pairs[id(node)] = (node, kind) + found
    consumed = {id(p[2]) for p in pairs.values()}
    sets = []
    for prod, kind, cons, ckind, features, relu6 in pairs.values():
        # A set starts at a producer that is not itself the depthwise middle of a longer set.
        if id(prod) in consumed and _depthwise(prod, kind, prod.inputs[1].const):
            continue
        s = _Set([prod, cons], [kind, ckind], features, list(relu6))
        while (_depthwise(s.layers[-1], s.kinds[-1], s.layers[-1].inputs[1].const)
               and s.features == 1 and id(s.layers[-1]) in pairs):
            _, _, nxt, nkind, features, relu6 = pairs[id(s.layers[-1])]
            if any(n is nxt for n in s.layers):
                break
            s.layers.append(nxt)
            s.kinds.append(nkind)
            s.features = features
            s.relu6.extend(relu6)
        sets.append(s)
    return sets


def _to_relu(g: Graph, node: Node) -> None:
    """Turn a clip(0, c) activation (fused epilogue or clip node) into relu (AIMET's ReLU6 swap)."""
    if node.graph is None:
        return  # already replaced (shared by two sets)
    if node.op in ("fused.conv", "fused.gemm"):
        node.attrs["activation"] = "relu"
        node.attrs["activation_params"] = ()
        return
    relu = g.add_node("nn.relu", [node.inputs[0]], name=f"{node.name}_relu",
                      provenance=node.provenance, before=node)
    old, name = node.outputs[0], node.outputs[0].name
    bounds = [v for v in node.inputs[1:] if v is not None]
    g.replace_all_uses(old, relu.output)
    g.erase_node(node)
    g.rename(old, f"{name}_replaced")  # the tensor keeps its name (encodings refer to it)
    g.rename(relu.output, name)
    for v in bounds:
        _erase_if_dead(v)


# -- the scaling ---------------------------------------------------------------------------

class _Weights:
    """Working float64 copies of the layers' weights and biases, written back once at the end."""

    def __init__(self):
        self.w: dict[int, np.ndarray] = {}
        self.b: dict[int, np.ndarray | None] = {}
        self.nodes: dict[int, Node] = {}
        self.bias_changed: set[int] = set()

    def get(self, node: Node) -> tuple[np.ndarray, np.ndarray | None]:
        key = id(node)
        if key not in self.w:
            self.nodes[key] = node
            self.w[key] = node.inputs[1].const.astype(np.float64)
            b = node.inputs[2] if len(node.inputs) > 2 else None
            self.b[key] = None if b is None else b.const.astype(np.float64)
        return self.w[key], self.b[key]

    def out_ranges(self, node: Node, kind: str) -> np.ndarray:
        w, _ = self.get(node)
        w = np.moveaxis(np.abs(w), _out_axis(node, kind), 0)
        return w.reshape(w.shape[0], -1).max(axis=1)

    def in_ranges(self, node: Node, kind: str, channels: int, features: int) -> np.ndarray:
        w, _ = self.get(node)
        if kind == "conv":
            return np.abs(_grouped(node, w)).max(axis=(1, 3)).reshape(-1)
        rows = np.abs(w.T if kind == "gemm" and _attr(node, "transB", 0) else w)  # [K, N]
        return rows.max(axis=1).reshape(channels, features).max(axis=1)

    def scale_out(self, node: Node, kind: str, s: np.ndarray) -> None:
        """Divide output channel i (weights and bias) by s_i."""
        w, b = self.get(node)
        axis = _out_axis(node, kind)
        shape = [1] * w.ndim
        shape[axis] = s.size
        self.w[id(node)] = w / s.reshape(shape)
        if b is not None:
            # A gemm's C broadcasts to [M, N]: dividing by s (shape [N]) keeps that true.
            self.b[id(node)] = b / (s if kind == "gemm" else s.reshape(b.shape))
            self.bias_changed.add(id(node))

    def scale_in(self, node: Node, kind: str, s: np.ndarray, features: int) -> None:
        """Multiply input channel i's weights by s_i (a channel spans ``features`` inputs)."""
        w, _ = self.get(node)
        if kind == "conv":
            gw = _grouped(node, w)
            g, _, cg, _ = gw.shape
            self.w[id(node)] = (gw * s.reshape(g, 1, cg, 1)).reshape(w.shape)
            return
        per_feature = np.repeat(s, features)
        if kind == "gemm" and _attr(node, "transB", 0):
            self.w[id(node)] = w * per_feature[None, :]
        else:
            self.w[id(node)] = w * per_feature[:, None]

    def write_back(self, g: Graph) -> None:
        for key, node in self.nodes.items():
            _replace_const(g, node, 1, self.w[key])
            if key in self.bias_changed:
                _replace_const(g, node, 2, self.b[key])


def _grouped(node: Node, w: np.ndarray) -> np.ndarray:
    """Conv weights [M, C/G, *K] as [G, M/G, C/G, prod(K)]: input channel g·C/G + c is [g, :, c, :]."""
    groups = int(_attr(node, "group", 1))
    m, cg = w.shape[:2]
    return w.reshape(groups, m // groups, cg, -1)


def _replace_const(g: Graph, node: Node, index: int, array: np.ndarray) -> None:
    old = node.inputs[index]
    new = g.add_constant(array.astype(old.const.dtype), name=f"{old.name}_cle")
    node.set_input(index, new)
    _erase_if_dead(old)


def _erase_if_dead(value: Value) -> None:
    """Erase a constant nothing reads any more (the graph keeps no dead weights)."""
    owner = value.graph
    if (value.const is not None and not value.uses and owner is not None
            and owner.constants.get(value.name) is value
            and not any(value is o for o in owner.outputs)):
        owner.erase_constant(value)


def _equalize_set(s: _Set, weights: _Weights) -> float:
    """One closed-form equalization of a set; returns the largest |log s| applied."""
    first, last = s.layers[0], s.layers[-1]
    ranges = [weights.out_ranges(first, s.kinds[0])]
    ranges += [weights.out_ranges(n, k) for n, k in zip(s.layers[1:-1], s.kinds[1:-1])]
    ranges.append(weights.in_ranges(last, s.kinds[-1], ranges[0].size, s.features))
    r = np.stack(ranges)  # [layers, channels]
    dead = (r <= _TINY).any(axis=0)
    r = np.where(dead, 1.0, r)
    geo = np.exp(np.log(r).mean(axis=0))
    # s_1 = r_0 / g; s_{k+1} = r_k · s_k / g: every layer's channel range becomes g.
    scales, s_k = [], np.ones_like(geo)
    for k in range(len(s.layers) - 1):
        s_k = np.where(dead, 1.0, r[k] * s_k / geo)
        scales.append(s_k)
    for k, sc in enumerate(scales):
        weights.scale_out(s.layers[k], s.kinds[k], sc)
        weights.scale_in(s.layers[k + 1], s.kinds[k + 1], sc, s.features if k + 1 == len(scales) else 1)
    return float(max(np.abs(np.log(sc)).max(initial=0.0) for sc in scales))
