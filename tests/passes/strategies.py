"""Hypothesis strategies that build random, VALID qir graphs (plus the feeds to run them).

Every pass's property test draws graphs from here, runs the pass and checks that the reference
interpreter computes the same outputs before and after (see tests/passes/helpers.py)::

    from hypothesis import given, settings
    from tests.passes.strategies import graphs
    from tests.passes.helpers import check_pass_preserves

    @settings(max_examples=60, deadline=None)
    @given(graphs())
    def test_dce_keeps_outputs(case):
        check_pass_preserves("dce", case.graph, case.feeds)

Strategies (each gives a :class:`Case` ``(graph, feeds)``; ``graph, feeds = case`` works too):

- :func:`elementwise_graphs` — DAGs of unary/binary elementwise ops with broadcasting shapes,
  relu/clip/sigmoid..., constants (some shared, some duplicated by value), softmax, matmul.
- :func:`shape_graphs` — the above plus reshape/transpose/flatten/concat/slice/squeeze/unsqueeze
  and transpose/reshape/cast chains that cancel.
- :func:`cnn_graphs` — NCHW conv (+batchnorm) (+relu/clip) (+residual add) blocks with random
  channels/kernels/strides/pads/dilations/groups (depthwise too), explicit pad ops before
  conv/pool, max/average/global pooling, then optionally flatten + matmul/gemm (+add) + softmax.
- :func:`transformer_graphs` — [B, S, D] graphs with LayerNorm, GELU (erf and tanh forms, and
  near misses with a wrong constant) and scaled-dot-product attention (3-D or split into heads,
  optional additive mask) spelled out in standard ops, linear layers (MatMul + Add), residuals.
- :func:`graphs` — any of them (the default for property tests).

All of them sprinkle in, unless turned off: identity/dropout(inference)/same-dtype cast no-ops,
dead branches (nodes nothing uses: work for dce) and duplicated subexpressions (the same op on
the same inputs twice: work for cse). Nodes are named ``n<i>`` with provenance ``("n<i>",)``,
like nodes coming from a source model; graph inputs are ``x<i>``, outputs ``out<i>``.

Tensor values come from a numpy RandomState seeded by a drawn integer (fast; hypothesis only
chooses the structure). Values stay in a moderate range (inputs in [-2, 2], conv weights scaled
by 1/sqrt(fan-in), BN variances in [0.5, 2], no division by numbers near zero), so float32
results of rewritten graphs agree to ~1e-5 relative; tests state their tolerance (helpers.py
defaults: rtol=1e-4, atol=1e-5).

Only float32 tensors flow between nodes (casts go out to f64/f16 and back).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np
from hypothesis import strategies as st

from qir.ir.graph import Graph, Value
from qir.ir.types import DType, TensorType

F32 = DType.FLOAT32

#: Unary ops safe on any finite float32 input (no NaN, no overflow).
SAFE_UNARY = ("nn.relu", "nn.sigmoid", "nn.tanh", "elementwise.abs", "elementwise.neg",
              "nn.softsign", "nn.leaky_relu", "nn.hard_sigmoid", "elementwise.clip")
#: Binary ops that broadcast; div only ever gets a constant divisor away from zero.
BINARY = ("elementwise.add", "elementwise.sub", "elementwise.mul", "elementwise.max", "elementwise.min")


class Case(NamedTuple):
    """A generated graph and feeds for its inputs (name → array)."""

    graph: Graph
    feeds: dict[str, np.ndarray]

    def __repr__(self) -> str:  # hypothesis prints the failing example: show the IR
        from qir.ir.printer import print_graph

        return f"Case(feeds={ {k: v.shape for k, v in self.feeds.items()} }, graph=\n{print_graph(self.graph)})"


class Builder:
    """Builds a graph step by step, remembering the float32 values later ops may read."""

    def __init__(self, draw: Callable, seed: int, name: str = "main"):
        self.draw = draw
        self.rng = np.random.RandomState(seed)
        self.g = Graph(name)
        self.pool: list[Value] = []      # values ops may read
        self.dead: set[int] = set()      # ids of values deliberately left unused
        self.feeds: dict[str, np.ndarray] = {}
        self.consts: list[Value] = []    # constants available for sharing
        self._n = 0

    # -- values ----------------------------------------------------------------------------
    def input(self, shape: tuple[int, ...]) -> Value:
        name = f"x{len(self.g.inputs)}"
        v = self.g.add_input(name, TensorType(F32, tuple(shape)))
        self.feeds[name] = self.rng.uniform(-2, 2, size=shape).astype(np.float32)
        self.pool.append(v)
        return v

    def const(self, array: np.ndarray, share: bool = True) -> Value:
        """A constant; with ``share`` an existing constant of equal shape and value may be
        reused (shared constants) or duplicated under a new name (for cse/constant dedup)."""
        array = np.asarray(array)
        if share and array.dtype == np.float32:
            same = [c for c in self.consts if c.const.shape == array.shape]
            if same and self.draw(st.integers(0, 3)) == 0:
                old = same[self.draw(st.integers(0, len(same) - 1))]
                if self.draw(st.booleans()):
                    return old                                     # shared
                return self._new_const(old.const.copy())         # equal value, another name
        return self._new_const(array)

    def _new_const(self, array: np.ndarray) -> Value:
        v = self.g.add_constant(array, f"c{len(self.g.constants)}")
        if array.dtype == np.float32:
            self.consts.append(v)
        return v

    def ints(self, values) -> Value:
        return self._new_const(np.asarray(list(values), dtype=np.int64))

    def weights(self, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0, scale: float = 1.0) -> Value:
        return self.const((self.rng.uniform(low, high, size=shape) * scale).astype(np.float32))

    # -- nodes -----------------------------------------------------------------------------
    def node(self, op: str, inputs: list, attrs: dict | None = None, *, pool: bool = True,
             num_outputs: int | None = 1) -> Value:
        """Add a node named n<i> (provenance: itself) and return its first output."""
        name = f"n{self._n}"
        self._n += 1
        n = self.g.add_node(op, inputs, attrs or {}, name=name, provenance=(name,),
                            output_names=[f"v{self._n - 1}"], num_outputs=num_outputs)
        if pool:
            self.pool.append(n.outputs[0])
        return n.outputs[0]

    def pick(self, predicate: Callable[[Value], bool] = lambda v: True) -> Value | None:
        """A pool value (later ones more likely, so chains get deep)."""
        cands = [v for v in self.pool if predicate(v)]
        if not cands:
            return None
        i = self.draw(st.integers(0, len(cands) - 1))
        # Bias towards recent values: pick from the back half half of the time.
        if self.draw(st.booleans()):
            i = len(cands) - 1 - (i // 2)
        return cands[i]

    # -- finishing -------------------------------------------------------------------------
    def finish(self, extra_outputs: bool = True) -> Case:
        """Make every unused, non-dead node output a graph output (at least one) and return."""
        outs = [v for n in self.g.nodes for v in n.outputs[:1]
                if not v.uses and id(v) not in self.dead]
        if not outs:
            live = [v for n in self.g.nodes for v in n.outputs[:1] if id(v) not in self.dead]
            outs = live[-1:]
        if not outs:  # no nodes at all: one relu on the first input
            outs = [self.node("nn.relu", [self.g.inputs[0]])]
        if extra_outputs and len(self.g.nodes) > 2 and self.draw(st.integers(0, 4)) == 0:
            inner = [v for n in self.g.nodes for v in n.outputs[:1]
                     if v.uses and id(v) not in self.dead and v not in outs]
            if inner:  # an intermediate value that is also a graph output
                outs.append(inner[self.draw(st.integers(0, len(inner) - 1))])
        for i, v in enumerate(outs):
            self.g.rename(v, f"out{i}")
        self.g.outputs = outs
        # Graph inputs nothing reads are legal; keep them (passes must keep the signature).
        return Case(self.g, self.feeds)


def _shape_of(v: Value) -> tuple[int, ...]:
    return tuple(v.type.shape)


def _sub_shape(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts onto ``shape``: some dims set to 1, some leading dims dropped."""
    drop = draw(st.integers(0, len(shape)))
    kept = shape[drop:]
    return tuple(1 if draw(st.integers(0, 2)) == 0 else d for d in kept)


def _broadcastable(a: tuple, b: tuple) -> bool:
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


# -- op emitters: each adds one (or a few) nodes reading pool values ------------------------

def emit_unary(b: Builder) -> None:
    x = b.pick()
    op = b.draw(st.sampled_from(SAFE_UNARY))
    if op == "elementwise.clip":
        lo = float(b.draw(st.sampled_from([-1.0, -0.5, 0.0])))
        hi = float(b.draw(st.sampled_from([0.5, 1.0, 6.0])))
        which = b.draw(st.integers(0, 2))  # both bounds, min only, max only
        mn = b.const(np.array(lo, np.float32), share=False) if which != 2 else None
        mx = b.const(np.array(hi, np.float32), share=False) if which != 1 else None
        inputs = [x, mn] if mx is None else [x, mn, mx]
        b.node(op, inputs)
    elif op == "nn.leaky_relu":
        b.node(op, [x], {"alpha": float(b.draw(st.sampled_from([0.01, 0.1, 0.2])))})
    elif op == "nn.hard_sigmoid":
        b.node(op, [x], {"alpha": 0.2, "beta": 0.5})
    else:
        b.node(op, [x])


def emit_binary(b: Builder) -> None:
    a = b.pick()
    sa = _shape_of(a)
    op = b.draw(st.sampled_from(BINARY + ("elementwise.div",)))
    if op == "elementwise.div":  # constant divisor in ±[0.5, 2]
        shape = _sub_shape(b.draw, sa)
        mag = b.rng.uniform(0.5, 2.0, size=shape) * b.rng.choice([-1, 1], size=shape)
        other = b.const(mag.astype(np.float32))
        b.node(op, [a, other])
        return
    kind = b.draw(st.integers(0, 3))
    other = None
    if kind <= 1:  # another pool value that broadcasts with a
        other = b.pick(lambda v: _broadcastable(_shape_of(v), sa))
    if other is None:
        if kind == 2:
            other = b.const(np.array(b.rng.uniform(-1.5, 1.5), np.float32))   # scalar
        else:
            other = b.weights(_sub_shape(b.draw, sa), -1.5, 1.5)
    if b.draw(st.booleans()):
        a, other = other, a
    b.node(op, [a, other])


def emit_variadic(b: Builder) -> None:
    """sum/max/min/mean of 2–3 broadcastable values."""
    a = b.pick()
    sa = _shape_of(a)
    others = [b.pick(lambda v: _broadcastable(_shape_of(v), sa)) for _ in range(b.draw(st.integers(1, 2)))]
    inputs = [a]
    for o in others:
        if all(_broadcastable(_shape_of(o), _shape_of(i)) for i in inputs):
            inputs.append(o)
    if len(inputs) == 1:
        inputs.append(b.weights(_sub_shape(b.draw, sa)))
    b.node(b.draw(st.sampled_from(["elementwise.sum", "elementwise.max", "elementwise.min", "elementwise.mean"])), inputs)


def emit_noop(b: Builder) -> None:
    """identity, dropout in inference, cast to f32 (same dtype), cast chains, transpose pairs."""
    x = b.pick()
    kind = b.draw(st.integers(0, 5))
    if kind == 0:
        b.node("tensor.identity", [x])
    elif kind == 1:
        ratio = b.draw(st.booleans())
        b.node("nn.dropout", [x, b.const(np.array(0.3, np.float32), share=False)] if ratio else [x])
    elif kind == 2:
        b.node("elementwise.cast", [x], {"to": F32, "saturate": 1, "round_mode": "up"})
    elif kind == 3:  # f32 → f64 → f32 is exact; f32 → f16 → f32 is not (must not be removed)
        mid = b.draw(st.sampled_from([DType.FLOAT64, DType.FLOAT16]))
        if mid == DType.FLOAT16:  # keep |x| small enough for f16
            x = b.node("nn.tanh", [x])
        y = b.node("elementwise.cast", [x], {"to": mid, "saturate": 1, "round_mode": "up"}, pool=False)
        b.node("elementwise.cast", [y], {"to": F32, "saturate": 1, "round_mode": "up"})
    elif kind == 4 and len(_shape_of(x)) >= 2:  # transpose then its inverse
        r = len(_shape_of(x))
        perm = b.draw(st.permutations(list(range(r))))
        y = b.node("tensor.transpose", [x], {"perm": tuple(perm)}, pool=False)
        inv = tuple(int(i) for i in np.argsort(perm))
        b.node("tensor.transpose", [y], {"perm": inv})
    else:  # reshape to the same shape
        b.node("tensor.reshape", [x, b.ints(_shape_of(x))], {"allowzero": 0})


def emit_softmax(b: Builder) -> None:
    x = b.pick(lambda v: len(_shape_of(v)) >= 1)
    if x is None:
        return
    r = len(_shape_of(x))
    op = b.draw(st.sampled_from(["nn.softmax", "nn.log_softmax"]))
    b.node(op, [x], {"axis": b.draw(st.integers(-r, r - 1))})


def emit_matmul(b: Builder) -> None:
    """matmul by a constant [K, M] (+ a bias add: MatMul+Add → gemm), or gemm on 2-D."""
    x = b.pick(lambda v: len(_shape_of(v)) >= 1)
    if x is None:
        return
    s = _shape_of(x)
    k, m = s[-1], b.draw(st.integers(1, 6))
    scale = 1 / math.sqrt(k)
    if len(s) == 2 and b.draw(st.booleans()):
        trans_b = b.draw(st.integers(0, 1))
        w = b.weights((m, k) if trans_b else (k, m), scale=scale)
        c = [] if b.draw(st.integers(0, 2)) == 0 else [b.weights(b.draw(st.sampled_from([(m,), (1, m), (s[0], m)])))]
        b.node("linalg.gemm", [x, w] + c, {"alpha": float(b.draw(st.sampled_from([1.0, 0.5]))),
                                          "beta": float(b.draw(st.sampled_from([1.0, 2.0]))),
                                          "transA": 0, "transB": trans_b})
        return
    y = b.node("linalg.matmul", [x, b.weights((k, m), scale=scale)])
    if b.draw(st.booleans()):
        bias = b.weights((m,))
        b.node("elementwise.add", [y, bias] if b.draw(st.booleans()) else [bias, y])


# -- shape ops ------------------------------------------------------------------------------

def emit_reshape(b: Builder) -> None:
    x = b.pick()
    s = _shape_of(x)
    kind = b.draw(st.integers(0, 3))
    if kind == 0:
        target = [-1]
    elif kind == 1 and len(s) >= 2:  # merge two adjacent dims (maybe with 0 = copy and -1)
        i = b.draw(st.integers(0, len(s) - 2))
        target = list(s[:i]) + [s[i] * s[i + 1]] + list(s[i + 2:])
        if b.draw(st.booleans()):
            target[i] = -1
        if i > 0 and b.draw(st.booleans()):
            target[0] = 0
    elif kind == 2:  # insert a 1
        i = b.draw(st.integers(0, len(s)))
        target = list(s[:i]) + [1] + list(s[i:])
    else:  # split a dim of even size
        even = [i for i, d in enumerate(s) if d % 2 == 0 and d > 0]
        if not even:
            target = [-1]
        else:
            i = b.draw(st.sampled_from(even))
            target = list(s[:i]) + [2, s[i] // 2] + list(s[i + 1:])
    b.node("tensor.reshape", [x, b.ints(target)], {"allowzero": 0})


def emit_transpose(b: Builder) -> None:
    x = b.pick(lambda v: len(_shape_of(v)) >= 2)
    if x is None:
        return
    perm = b.draw(st.permutations(list(range(len(_shape_of(x))))))
    b.node("tensor.transpose", [x], {"perm": tuple(int(p) for p in perm)})


def emit_flatten(b: Builder) -> None:
    x = b.pick()
    r = len(_shape_of(x))
    b.node("tensor.flatten", [x], {"axis": b.draw(st.integers(-r, r)) if r else 0})


def emit_concat(b: Builder) -> None:
    x = b.pick(lambda v: len(_shape_of(v)) >= 1)
    if x is None:
        return
    s = _shape_of(x)
    axis = b.draw(st.integers(0, len(s) - 1))
    fits = lambda v: (len(_shape_of(v)) == len(s) and v is not x and
                      all(d == e for i, (d, e) in enumerate(zip(_shape_of(v), s)) if i != axis))
    other = b.pick(fits) if b.draw(st.booleans()) else None
    if other is None:
        shape = list(s)
        shape[axis] = b.draw(st.integers(1, 3))
        other = x if b.draw(st.integers(0, 2)) == 0 else b.weights(tuple(shape))
    inputs = [x, other] if b.draw(st.booleans()) else [other, x]
    if b.draw(st.integers(0, 3)) == 0:
        inputs.append(x)
    neg = b.draw(st.booleans())
    b.node("tensor.concat", inputs, {"axis": axis - len(s) if neg else axis})


def emit_slice(b: Builder) -> None:
    x = b.pick(lambda v: len(_shape_of(v)) >= 1 and max(_shape_of(v)) >= 2)
    if x is None:
        return
    s = _shape_of(x)
    axes = [i for i, d in enumerate(s) if d >= 2]
    axis = b.draw(st.sampled_from(axes))
    d = s[axis]
    step = b.draw(st.sampled_from([1, 1, 2, -1]))
    if step > 0:
        start = b.draw(st.integers(0, d - 1))
        end = b.draw(st.integers(start + 1, d))
        if end == d and b.draw(st.booleans()):
            end = 2**62  # "to the end", clamped
    else:
        start, end = d - 1, -(d + 1)
    inputs = [x, b.ints([start]), b.ints([end])]
    if b.draw(st.booleans()) or step != 1:
        inputs.append(b.ints([axis - len(s) if b.draw(st.booleans()) else axis]))
        if step != 1 or b.draw(st.booleans()):
            inputs.append(b.ints([step]))
    elif axis != 0:
        inputs.append(b.ints([axis]))
    b.node("tensor.slice", inputs)


def emit_squeeze_unsqueeze(b: Builder) -> None:
    x = b.pick()
    s = _shape_of(x)
    ones = [i for i, d in enumerate(s) if d == 1]
    if ones and b.draw(st.booleans()):
        axes = b.draw(st.lists(st.sampled_from(ones), min_size=1, max_size=len(ones), unique=True))
        b.node("tensor.squeeze", [x, b.ints(sorted(axes))])
    elif len(s) < 5:
        axis = b.draw(st.integers(0, len(s)))
        y = b.node("tensor.unsqueeze", [x, b.ints([axis])])
        if b.draw(st.booleans()):  # and squeeze it back: a cancelling pair
            b.node("tensor.squeeze", [y, b.ints([axis])])


def emit_dead_branch(b: Builder) -> None:
    """A few nodes whose results nothing uses (not graph outputs)."""
    x = b.pick()
    y = b.node(b.draw(st.sampled_from(["nn.relu", "elementwise.neg", "nn.sigmoid"])), [x], pool=False)
    if b.draw(st.booleans()):
        y = b.node("elementwise.mul", [y, b.weights(())], pool=False)
    b.dead.add(id(y))


def emit_duplicate(b: Builder) -> None:
    """Re-add an existing node with the same op, inputs and attributes (cse has work)."""
    nodes = [n for n in b.g.nodes if len(n.outputs) == 1 and id(n.outputs[0]) not in b.dead
             and n.outputs[0] in b.pool]
    if not nodes:
        return
    n = nodes[b.draw(st.integers(0, len(nodes) - 1))]
    dup = b.node(n.op, list(n.inputs), dict(n.attrs))
    # Use both copies together so both stay live.
    b.node("elementwise.add", [n.outputs[0], dup])


ELEMENTWISE_EMITTERS = [emit_unary, emit_unary, emit_binary, emit_binary, emit_binary, emit_variadic,
                        emit_softmax, emit_matmul]
SHAPE_EMITTERS = [emit_reshape, emit_transpose, emit_flatten, emit_concat, emit_slice,
                  emit_squeeze_unsqueeze]
EXTRA_EMITTERS = [emit_noop, emit_dead_branch, emit_duplicate]


def _run_emitters(b: Builder, emitters: list, n_ops: int) -> None:
    for _ in range(n_ops):
        b.draw(st.sampled_from(emitters))(b)


@st.composite
def elementwise_graphs(draw, max_ops: int = 10, shape_ops: bool = False, extras: bool = True) -> Case:
    """Random DAGs of elementwise ops (broadcasting), activations, softmax and matmul."""
    b = Builder(draw, draw(st.integers(0, 2**31 - 1)))
    rank = draw(st.integers(1, 4))
    base = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    b.input(base)
    for _ in range(draw(st.integers(0, 2))):
        b.input(_sub_shape(draw, base))
    emitters = list(ELEMENTWISE_EMITTERS)
    if shape_ops:
        emitters += SHAPE_EMITTERS
    if extras:
        emitters += EXTRA_EMITTERS
    _run_emitters(b, emitters, draw(st.integers(min(3, max_ops), max_ops)))
    return b.finish()


def shape_graphs(max_ops: int = 10, extras: bool = True) -> st.SearchStrategy[Case]:
    """Elementwise DAGs mixed with reshape/transpose/flatten/concat/slice/squeeze/unsqueeze."""
    return elementwise_graphs(max_ops=max_ops, shape_ops=True, extras=extras)


# -- CNNs -----------------------------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _conv_out(size: int, k: int, s: int, d: int, pb: int, pe: int) -> int:
    return (size + pb + pe - d * (k - 1) - 1) // s + 1


def _nchw(v: Value) -> bool:
    return len(_shape_of(v)) == 4


def emit_conv_block(b: Builder) -> None:
    """conv (+bias) (+batchnorm) (+relu/clip/...) (+residual add), random geometry and groups."""
    x = b.pick(_nchw)
    if x is None:
        return
    n, c, h, w = _shape_of(x)
    draw = b.draw
    depthwise = c > 1 and draw(st.integers(0, 3)) == 0
    if depthwise:
        group = c
        c_out = c * draw(st.sampled_from([1, 1, 2]))
    else:
        group = draw(st.sampled_from(_divisors(c))) if draw(st.booleans()) else 1
        c_out = group * draw(st.integers(1, max(1, 6 // group)))
    same_residual = draw(st.integers(0, 2)) == 0
    kh = draw(st.sampled_from([1, 3, 3] if h >= 3 else [1]))
    kw = kh if kh <= w and draw(st.integers(0, 3)) else draw(st.sampled_from([1, 3] if w >= 3 else [1]))
    if same_residual:  # stride 1, "same" pads: the output may be added to the input
        sh = sw = dh = dw = 1
        pads = (kh // 2, kw // 2, kh // 2, kw // 2)
    else:
        sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        dh = draw(st.sampled_from([1, 1, 2])) if kh > 1 and h >= 5 else 1
        dw = draw(st.sampled_from([1, 1, 2])) if kw > 1 and w >= 5 else 1
        pads = tuple(draw(st.integers(0, max(0, k - 1))) for k in (kh, kw, kh, kw))
    oh, ow = _conv_out(h, kh, sh, dh, pads[0], pads[2]), _conv_out(w, kw, sw, dw, pads[1], pads[3])
    if oh < 1 or ow < 1:  # "same" padding, stride 1: the output keeps the input's size
        sh = sw = dh = dw = 1
        pads = (kh // 2, kw // 2, kh // 2, kw // 2)
    # Sometimes an explicit zero Pad op instead of conv pads (pad folding has work).
    if not same_residual and any(pads) and draw(st.integers(0, 2)) == 0:
        x_in = b.node("tensor.pad", [x, b.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]),
                                     b.const(np.array(0, np.float32), share=False)], {"mode": "constant"},
                      pool=False)
        pads = (0, 0, 0, 0)
    else:
        x_in = x
    fan_in = (c // group) * kh * kw
    wt = b.weights((c_out, c // group, kh, kw), scale=1 / math.sqrt(fan_in))
    inputs = [x_in, wt]
    if draw(st.booleans()):
        inputs.append(b.weights((c_out,), -0.5, 0.5))
    y = b.node("nn.conv", inputs, {"auto_pad": "NOTSET", "dilations": (dh, dw), "group": group,
                                   "kernel_shape": (kh, kw), "pads": pads, "strides": (sh, sw)},
               pool=False)
    if draw(st.integers(0, 3)):
        y = emit_batchnorm(b, y, pool=False)
    act = draw(st.sampled_from(["nn.relu", "nn.relu", "relu6", "clip0", "nn.sigmoid", "nn.leaky_relu", None]))
    residual = same_residual and c_out == c and draw(st.booleans())
    if residual and draw(st.booleans()):  # add before the activation (ResNet style)
        y = b.node("elementwise.add", [y, x] if draw(st.booleans()) else [x, y], pool=False)
        residual = False
    if act is not None:
        y = _activation(b, y, act)
    if residual:
        y = b.node("elementwise.add", [x, y], pool=False)
    b.pool.append(y)


def emit_batchnorm(b: Builder, x: Value | None = None, pool: bool = True) -> Value | None:
    """Inference batchnorm with running statistics (variance in [0.5, 2])."""
    if x is None:
        x = b.pick(_nchw)
        if x is None:
            return None
    c = _shape_of(x)[1]
    r = b.rng
    params = [r.uniform(0.5, 1.5, c), r.uniform(-0.5, 0.5, c), r.uniform(-0.5, 0.5, c), r.uniform(0.5, 2.0, c)]
    ins = [x] + [b.const(p.astype(np.float32), share=False) for p in params]
    eps = float(b.draw(st.sampled_from([1e-5, 1e-3])))
    return b.node("nn.batch_normalization", ins, {"epsilon": eps, "momentum": 0.9, "training_mode": 0},
                  pool=pool)


def _activation(b: Builder, x: Value, act: str) -> Value:
    if act == "relu6":
        return b.node("elementwise.clip", [x, b.const(np.array(0, np.float32), share=False),
                                           b.const(np.array(6, np.float32), share=False)], pool=False)
    if act == "clip0":  # clip with a min only
        return b.node("elementwise.clip", [x, b.const(np.array(0, np.float32), share=False)], pool=False)
    if act == "nn.leaky_relu":
        return b.node(act, [x], {"alpha": 0.1}, pool=False)
    return b.node(act, [x], pool=False)


def emit_pool(b: Builder) -> None:
    """max/average pooling (maybe after an explicit Pad) or a global pool."""
    x = b.pick(_nchw)
    if x is None:
        return
    _, _, h, w = _shape_of(x)
    draw = b.draw
    kind = draw(st.sampled_from(["max", "avg", "global_avg", "global_max"]))
    if kind.startswith("global"):
        b.node("nn.global_average_pool" if kind == "global_avg" else "nn.global_max_pool", [x])
        return
    k = draw(st.integers(1, min(3, h, w)))
    s = draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, k - 1)) for _ in range(4)) if k > 1 else (0, 0, 0, 0)
    if any(pads) and kind == "avg" and draw(st.integers(0, 2)) == 0:
        x = b.node("tensor.pad", [x, b.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])],
                   {"mode": "constant"}, pool=False)
        pads = (0, 0, 0, 0)
        count_include_pad = 1  # Pad then AveragePool counts the zeros
    else:
        count_include_pad = draw(st.integers(0, 1))
    attrs = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": (1, 1), "kernel_shape": (k, k),
             "pads": pads, "strides": (s, s)}
    if kind == "max":
        b.node("nn.max_pool", [x], {**attrs, "storage_order": 0})
    else:
        b.node("nn.average_pool", [x], {**attrs, "count_include_pad": count_include_pad})


def emit_channel_concat(b: Builder) -> None:
    x = b.pick(_nchw)
    if x is None:
        return
    s = _shape_of(x)
    other = b.pick(lambda v: _nchw(v) and v is not x and _shape_of(v)[2:] == s[2:])
    if other is None:
        return
    b.node("tensor.concat", [x, other], {"axis": 1})


def emit_head(b: Builder) -> None:
    """global pool / flatten, then matmul+add or gemm, maybe softmax (a classifier head)."""
    x = b.pick(_nchw)
    if x is None:
        return
    if b.draw(st.booleans()):
        x = b.node("nn.global_average_pool", [x], pool=False)
    if b.draw(st.booleans()):
        x = b.node("tensor.flatten", [x], {"axis": 1}, pool=False)
    else:
        x = b.node("tensor.reshape", [x, b.ints([_shape_of(x)[0], -1])], {"allowzero": 0}, pool=False)
    k = _shape_of(x)[1]
    m = b.draw(st.integers(2, 6))
    if b.draw(st.booleans()):
        y = b.node("linalg.gemm", [x, b.weights((m, k), scale=1 / math.sqrt(k)), b.weights((m,))],
                   {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}, pool=False)
    else:
        y = b.node("linalg.matmul", [x, b.weights((k, m), scale=1 / math.sqrt(k))], pool=False)
        y = b.node("elementwise.add", [y, b.weights((m,))], pool=False)
    if b.draw(st.booleans()):
        y = b.node("nn.softmax", [y], {"axis": -1}, pool=False)
    b.pool.append(y)


CNN_EMITTERS = [emit_conv_block, emit_conv_block, emit_conv_block, emit_pool, emit_pool,
                emit_channel_concat, lambda b: emit_batchnorm(b)]


@st.composite
def cnn_graphs(draw, max_blocks: int = 5, head: bool | None = None, extras: bool = True) -> Case:
    """NCHW networks: conv/bn/activation/residual blocks, pads, pooling, concat, a head."""
    b = Builder(draw, draw(st.integers(0, 2**31 - 1)))
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 6))
    h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    b.input((n, c, h, w))
    emitters = list(CNN_EMITTERS)
    if extras:
        emitters += [emit_noop, emit_dead_branch, emit_duplicate, emit_unary]
    _run_emitters(b, emitters, draw(st.integers(min(2, max_blocks), max_blocks)))
    if head if head is not None else draw(st.booleans()):
        emit_head(b)
    return b.finish()


# -- transformer patterns: decomposed LayerNorm / GELU / attention (recognize-* have work) ---------

def _scalar(b: Builder, value: float) -> Value:
    return b.const(np.array(value, np.float32), share=False)


def emit_layernorm_decomposed(b: Builder, x: Value | None = None) -> Value | None:
    """(x − mean)/sqrt(var + eps)·γ + β spelled out with reduce.mean, in one of its forms
    (pow 2 or x·x; div or ·reciprocal; with or without γ/β; over the last one or two axes)."""
    x = x if x is not None else b.pick(lambda v: len(_shape_of(v)) >= 2)
    if x is None:
        return None
    s = _shape_of(x)
    draw = b.draw
    n_axes = 2 if len(s) >= 3 and draw(st.integers(0, 3)) == 0 else 1
    axes = list(range(len(s) - n_axes, len(s)))
    if draw(st.booleans()):
        axes = [a - len(s) for a in axes]
    red = {"keepdims": 1, "noop_with_empty_axes": 0}
    mean = b.node("reduce.mean", [x, b.ints(axes)], red, pool=False)
    d = b.node("elementwise.sub", [x, mean], pool=False)
    if draw(st.booleans()):
        sq = b.node("elementwise.pow", [d, _scalar(b, 2.0)], pool=False)
    else:
        sq = b.node("elementwise.mul", [d, d], pool=False)
    var = b.node("reduce.mean", [sq, b.ints(axes)], red, pool=False)
    eps = float(draw(st.sampled_from([1e-5, 1e-6, 1e-12])))
    std = b.node("elementwise.sqrt", [b.node("elementwise.add", [var, _scalar(b, eps)], pool=False)], pool=False)
    if draw(st.booleans()):
        y = b.node("elementwise.div", [d, std], pool=False)
    else:
        y = b.node("elementwise.mul", [d, b.node("elementwise.reciprocal", [std], pool=False)], pool=False)
    norm_shape = s[len(s) - n_axes:]
    if draw(st.integers(0, 3)):
        y = b.node("elementwise.mul", [y, b.weights(norm_shape, 0.5, 1.5)], pool=False)
        if draw(st.integers(0, 3)):
            y = b.node("elementwise.add", [y, b.weights(norm_shape, -0.5, 0.5)], pool=False)
    b.pool.append(y)
    return y


def emit_gelu_decomposed(b: Builder, x: Value | None = None) -> Value | None:
    """GELU spelled out: x·0.5·(1 + erf(x/√2)) (several orders), or the tanh approximation;
    sometimes with a wrong constant (a near miss that must not be recognized)."""
    x = x if x is not None else b.pick()
    if x is None:
        return None
    draw = b.draw
    near_miss = draw(st.integers(0, 7)) == 0
    half = 0.6 if near_miss else 0.5
    if draw(st.integers(0, 2)):
        if draw(st.booleans()):
            inner = b.node("elementwise.div", [x, _scalar(b, math.sqrt(2))], pool=False)
        else:
            inner = b.node("elementwise.mul", [x, _scalar(b, 1 / math.sqrt(2))], pool=False)
        t = b.node("elementwise.erf", [inner], pool=False)
    else:  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        if draw(st.booleans()):
            cube = b.node("elementwise.pow", [x, _scalar(b, 3.0)], pool=False)
        else:
            cube = b.node("elementwise.mul", [x, b.node("elementwise.mul", [x, x], pool=False)], pool=False)
        u = b.node("elementwise.add", [x, b.node("elementwise.mul", [cube, _scalar(b, 0.044715)], pool=False)],
                   pool=False)
        t = b.node("nn.tanh", [b.node("elementwise.mul", [u, _scalar(b, math.sqrt(2 / math.pi))], pool=False)],
                   pool=False)
    one_plus = b.node("elementwise.add", [t, _scalar(b, 1.0)] if draw(st.booleans()) else [_scalar(b, 1.0), t],
                      pool=False)
    order = draw(st.integers(0, 2))
    if order == 0:    # (x·0.5)·(1+t)
        y = b.node("elementwise.mul", [b.node("elementwise.mul", [x, _scalar(b, half)], pool=False), one_plus],
                   pool=False)
    elif order == 1:  # x·((1+t)·0.5)
        y = b.node("elementwise.mul", [x, b.node("elementwise.mul", [one_plus, _scalar(b, half)], pool=False)],
                   pool=False)
    else:             # (x·(1+t))·0.5
        y = b.node("elementwise.mul", [b.node("elementwise.mul", [x, one_plus], pool=False), _scalar(b, half)],
                   pool=False)
    b.pool.append(y)
    return y


def emit_linear(b: Builder, x: Value | None = None, out: int | None = None) -> Value | None:
    """x·W + bias on the last axis (MatMul + Add, the form exporters write)."""
    x = x if x is not None else b.pick(lambda v: len(_shape_of(v)) >= 2)
    if x is None:
        return None
    k = _shape_of(x)[-1]
    m = out or b.draw(st.integers(2, 8))
    y = b.node("linalg.matmul", [x, b.weights((k, m), scale=1 / math.sqrt(k))], pool=False)
    if b.draw(st.integers(0, 3)):
        bias = b.weights((m,), -0.5, 0.5)
        y = b.node("elementwise.add", [y, bias] if b.draw(st.booleans()) else [bias, y], pool=False)
    b.pool.append(y)
    return y


def emit_attention(b: Builder) -> None:
    """softmax(q·kᵀ·scale [+ mask])·v on [B, S, D] or split into heads [B, H, S, Dh]."""
    x = b.pick(lambda v: len(_shape_of(v)) == 3)
    if x is None:
        return
    bsz, seq, d = _shape_of(x)
    draw = b.draw
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if d % h == 0]))
    q, k, v = (emit_linear(b, x, d) for _ in range(3))
    if heads > 1 or draw(st.booleans()):  # [B, S, D] → [B, H, S, Dh]
        def split(t):
            r = b.node("tensor.reshape", [t, b.ints([bsz, seq, heads, d // heads])], {"allowzero": 0}, pool=False)
            return b.node("tensor.transpose", [r], {"perm": (0, 2, 1, 3)}, pool=False)
        q, k, v = split(q), split(k), split(v)
    rank = len(_shape_of(q))
    perm = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    kt = b.node("tensor.transpose", [k], {"perm": perm}, pool=False)
    scores = b.node("linalg.matmul", [q, kt], pool=False)
    dh = _shape_of(q)[-1]
    if draw(st.booleans()):
        scores = b.node("elementwise.mul", [scores, _scalar(b, 1 / math.sqrt(dh))], pool=False)
    else:
        scores = b.node("elementwise.div", [scores, _scalar(b, math.sqrt(dh))], pool=False)
    if draw(st.integers(0, 2)) == 0:  # additive mask over the keys
        mask = np.where(b.rng.uniform(size=(seq, seq)) < 0.2, -1e4, 0).astype(np.float32)
        scores = b.node("elementwise.add", [scores, b.const(mask, share=False)], pool=False)
    att = b.node("nn.softmax", [scores], {"axis": -1}, pool=False)
    y = b.node("linalg.matmul", [att, v], pool=False)
    if rank == 4:
        y = b.node("tensor.transpose", [y], {"perm": (0, 2, 1, 3)}, pool=False)
        y = b.node("tensor.reshape", [y, b.ints([bsz, seq, d])], {"allowzero": 0}, pool=False)
    if draw(st.booleans()):
        y = b.node("elementwise.add", [x, y], pool=False)  # residual
    b.pool.append(y)


def emit_fused_ops(b: Builder) -> None:
    """The ops recognition produces, as a model might already contain them."""
    x = b.pick(lambda v: len(_shape_of(v)) >= 2)
    if x is None:
        return
    s = _shape_of(x)
    if b.draw(st.booleans()):
        b.node("nn.layer_normalization", [x, b.weights(s[-1:], 0.5, 1.5), b.weights(s[-1:], -0.5, 0.5)],
               {"axis": -1, "epsilon": 1e-5, "stash_type": 1})
    else:
        b.node("nn.gelu", [x], {"approximate": b.draw(st.sampled_from(["none", "tanh"]))})


TRANSFORMER_EMITTERS = [emit_layernorm_decomposed, emit_gelu_decomposed, emit_linear, emit_attention,
                        emit_attention, emit_fused_ops, emit_binary, emit_softmax]


@st.composite
def transformer_graphs(draw, max_ops: int = 6, extras: bool = True) -> Case:
    """[B, S, D] graphs with LayerNorm / GELU / attention spelled out (and near misses), linear
    layers (MatMul + Add) and residual adds: work for recognize-* and matmul-add fusion."""
    b = Builder(draw, draw(st.integers(0, 2**31 - 1)))
    bsz, seq = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    d = draw(st.sampled_from([2, 4, 8]))
    b.input((bsz, seq, d))
    emitters = list(TRANSFORMER_EMITTERS)
    if extras:
        emitters += EXTRA_EMITTERS
    _run_emitters(b, emitters, draw(st.integers(min(2, max_ops), max_ops)))
    return b.finish()


def graphs(max_ops: int = 10, extras: bool = True) -> st.SearchStrategy[Case]:
    """Any generated graph: elementwise DAGs, shape-op DAGs, CNNs or transformer pieces."""
    return st.one_of(elementwise_graphs(max_ops=max_ops, extras=extras),
                     shape_graphs(max_ops=max_ops, extras=extras),
                     cnn_graphs(max_blocks=max(1, max_ops // 2), extras=extras),
                     transformer_graphs(max_ops=max(1, max_ops // 2), extras=extras))


__all__ = ["Builder", "Case", "cnn_graphs", "elementwise_graphs", "graphs", "shape_graphs", "transformer_graphs"]
