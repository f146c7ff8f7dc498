"""recognize-layernorm/gelu/attention and their decompositions: golden IR, property tests.

Property tests draw decomposed LayerNorm / GELU / attention chains in the variants exporters
write (a local strategy: operand orders, Pow vs Mul, Div vs Reciprocal, erf vs tanh, with or
without scale/mask, rank 3 and 4), embedded between random elementwise ops, and check that
recognition fires and that the outputs stay the same (float32, rtol 1e-4 / atol 1e-5: the fused
ops reassociate, e.g. attention scales Q and K by sqrt(scale) each), then that decomposing
again keeps them too. Random graphs without the patterns (tests/passes/strategies.py) must come
out with the same outputs as well.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from qir.ir.graph import Graph, Value
from qir.ir.types import DType, TensorType
from tests.passes.helpers import GOLDEN_DIR, PROPERTY_SETTINGS, check_pass_preserves, golden
from tests.passes.strategies import graphs

F32 = DType.FLOAT32
GOLDEN = GOLDEN_DIR / "recognize"
RECOGNIZE = "recognize-layernorm,recognize-gelu,recognize-attention"
DECOMPOSE = "decompose-layernorm,decompose-gelu,decompose-attention"


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.walk()]


# -- golden --------------------------------------------------------------------------------

@pytest.mark.parametrize("stem, pipeline", [
    ("layernorm_torch", "recognize-layernorm"),
    ("layernorm_plain", "recognize-layernorm"),
    ("gelu_erf", "recognize-gelu"),
    ("gelu_tanh", "recognize-gelu"),
    ("attention_mask", "recognize-attention"),
    ("attention_3d", "recognize-attention"),
])
def test_recognize_golden(stem, pipeline):
    g = golden(GOLDEN / f"{stem}.qir", pipeline)
    fused = {"recognize-layernorm": "nn.layer_normalization", "recognize-gelu": "nn.gelu",
             "recognize-attention": "nn.attention"}[pipeline]
    assert ops(g).count(fused) == 1


@pytest.mark.parametrize("stem, pipeline", [
    ("layernorm_torch", "recognize-layernorm,decompose-layernorm"),
    ("gelu_erf", "recognize-gelu,decompose-gelu"),
    ("gelu_tanh", "recognize-gelu,decompose-gelu"),
    ("attention_mask", "recognize-attention,decompose-attention"),
])
def test_decompose_golden(stem, pipeline):
    g = golden(GOLDEN / f"{stem}.qir", pipeline, GOLDEN / f"{stem}.decomposed.qir")
    assert not {"nn.layer_normalization", "nn.gelu", "nn.attention"} & set(ops(g))


# -- a local strategy: decomposed chains as exporters write them ---------------------------

class _B:
    """A tiny graph builder naming nodes n<i> with provenance, like a source model."""

    def __init__(self, seed: int):
        self.g = Graph("main")
        self.rng = np.random.RandomState(seed)
        self.i = 0

    def node(self, op: str, inputs: list, attrs: dict | None = None) -> Value:
        name = f"n{self.i}"
        self.i += 1
        return self.g.add_node(op, inputs, attrs, name=name, provenance=(name,), num_outputs=1).outputs[0]

    def c(self, value) -> Value:
        return self.g.add_constant(np.asarray(value, dtype=np.float32))

    def bin(self, op: str, a: Value, b: Value, swap: bool) -> Value:
        return self.node(op, [b, a] if swap else [a, b])


@st.composite
def layernorm_cases(draw):
    b = _B(draw(st.integers(0, 2**16)))
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    k = draw(st.integers(1, rank))  # normalized trailing dims
    x = b.g.add_input("x0", TensorType(F32, shape))
    if draw(st.booleans()):
        x = b.node("nn.tanh", [x])
    axes = [r - rank if draw(st.booleans()) else r for r in range(rank - k, rank)]
    ax = b.g.add_constant(np.array(axes, dtype=np.int64))
    mean = b.node("reduce.mean", [x, ax], {"keepdims": 1})
    d = b.node("elementwise.sub", [x, mean])
    sq = b.node("elementwise.pow", [d, b.c(2.0)]) if draw(st.booleans()) else b.node("elementwise.mul", [d, d])
    var = b.node("reduce.mean", [sq, ax], {"keepdims": 1})
    eps = draw(st.sampled_from([1e-5, 1e-6, 1e-12]))
    s = b.node("elementwise.sqrt", [b.bin("elementwise.add", var, b.c(eps), draw(st.booleans()))])
    if draw(st.booleans()):
        y = b.node("elementwise.div", [d, s])
    else:
        y = b.bin("elementwise.mul", d, b.node("elementwise.reciprocal", [s]), draw(st.booleans()))
    norm = shape[rank - k:]
    if draw(st.booleans()):
        y = b.bin("elementwise.mul", y, b.c(b.rng.uniform(0.5, 1.5, norm[-draw(st.integers(1, k)):])), draw(st.booleans()))
    if draw(st.booleans()):
        y = b.bin("elementwise.add", y, b.c(b.rng.uniform(-1, 1, norm)), draw(st.booleans()))
    b.g.outputs = [b.node("nn.relu", [y]) if draw(st.booleans()) else y]
    return b.g, 1


@st.composite
def gelu_cases(draw):
    b = _B(draw(st.integers(0, 2**16)))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    x = b.g.add_input("x0", TensorType(F32, shape))
    if draw(st.booleans()):
        x = b.node("nn.sigmoid", [x])
    sw = lambda: draw(st.booleans())  # noqa: E731
    if draw(st.booleans()):
        pre = b.node("elementwise.div", [x, b.c(math.sqrt(2))]) if sw() else \
            b.bin("elementwise.mul", x, b.c(1 / math.sqrt(2)), sw())
        inner = b.node("elementwise.erf", [pre])
    else:
        cube = b.node("elementwise.pow", [x, b.c(3.0)]) if sw() else \
            b.bin("elementwise.mul", b.node("elementwise.mul", [x, x]), x, sw())
        t = b.bin("elementwise.add", x, b.bin("elementwise.mul", cube, b.c(0.044715), sw()), sw())
        inner = b.node("nn.tanh", [b.bin("elementwise.mul", t, b.c(math.sqrt(2 / math.pi)), sw())])
    bracket = b.bin("elementwise.add", inner, b.c(1.0), sw())
    form = draw(st.integers(0, 2))
    if form == 0:    # (x * bracket) * 0.5
        y = b.bin("elementwise.mul", b.bin("elementwise.mul", x, bracket, sw()), b.c(0.5), sw())
    elif form == 1:  # (bracket * 0.5) * x
        y = b.bin("elementwise.mul", b.bin("elementwise.mul", bracket, b.c(0.5), sw()), x, sw())
    else:            # (x * 0.5) * bracket
        y = b.bin("elementwise.mul", b.bin("elementwise.mul", x, b.c(0.5), sw()), bracket, sw())
    b.g.outputs = [y]
    return b.g, 1


@st.composite
def attention_cases(draw):
    b = _B(draw(st.integers(0, 2**16)))
    rank = draw(st.sampled_from([3, 4]))
    B, H, Sq, Sk, D, Dv = (draw(st.integers(1, 3)) for _ in range(6))
    lead = (B, H) if rank == 4 else (B,)
    q = b.g.add_input("q", TensorType(F32, lead + (Sq, D)))
    v = b.g.add_input("v", TensorType(F32, lead + (Sk, Dv)))
    key_form = draw(st.sampled_from(["swap", "heads_last", "given"] if rank == 4 else ["swap", "given"]))
    if key_form == "swap":
        k = b.g.add_input("k", TensorType(F32, lead + (Sk, D)))
        kt = b.node("tensor.transpose", [k], {"perm": list(range(rank - 2)) + [rank - 1, rank - 2]})
    elif key_form == "heads_last":  # torch: K as [B, S, H, D] → Kᵀ [B, H, D, S] in one transpose
        k = b.g.add_input("k", TensorType(F32, (B, Sk, H, D)))
        kt = b.node("tensor.transpose", [k], {"perm": [0, 2, 3, 1]})
    else:  # Kᵀ is an input: nn.attention gets a transpose of it
        kt = b.g.add_input("kt", TensorType(F32, lead + (D, Sk)))
    s = b.node("linalg.matmul", [q, kt])
    scaling = draw(st.sampled_from(["none", "mul", "div"]))
    if scaling == "mul":
        s = b.bin("elementwise.mul", s, b.c(draw(st.floats(0.1, 2.0))), draw(st.booleans()))
    elif scaling == "div":
        s = b.node("elementwise.div", [s, b.c(math.sqrt(D))])
    if draw(st.booleans()):
        mshape = (Sq, Sk) if rank == 3 or draw(st.booleans()) else (B, 1, Sq, Sk)
        mask = np.where(b.rng.rand(*mshape) < 0.3, -1e4, 0).astype(np.float32)
        mask[..., 0] = 0  # no fully masked row (nn.attention gives zeros there, softmax NaN)
        s = b.bin("elementwise.add", s, b.c(mask), draw(st.booleans()))
    y = b.node("linalg.matmul", [b.node("nn.softmax", [s], {"axis": draw(st.sampled_from([-1, rank - 1]))}), v])
    b.g.outputs = [y]
    return b.g, 1


def _feeds(graph: Graph) -> dict:
    rng = np.random.RandomState(1)
    return {v.name: rng.uniform(-2, 2, v.type.shape).astype(np.float32) for v in graph.inputs}


def _check_round_trip(graph: Graph, pass_name: str, fused_op: str) -> None:
    feeds = _feeds(graph)
    after = check_pass_preserves(pass_name, graph, feeds)
    assert ops(after).count(fused_op) == 1, ops(after)
    back = check_pass_preserves(f"{pass_name},{DECOMPOSE}", graph, feeds)
    assert fused_op not in ops(back)


@PROPERTY_SETTINGS
@given(layernorm_cases())
def test_layernorm_recognized_and_decomposed(case):
    _check_round_trip(case[0], "recognize-layernorm", "nn.layer_normalization")


@PROPERTY_SETTINGS
@given(gelu_cases())
def test_gelu_recognized_and_decomposed(case):
    _check_round_trip(case[0], "recognize-gelu", "nn.gelu")


@PROPERTY_SETTINGS
@given(attention_cases())
def test_attention_recognized_and_decomposed(case):
    _check_round_trip(case[0], "recognize-attention", "nn.attention")


@PROPERTY_SETTINGS
@given(graphs())
def test_random_graphs_keep_outputs(case):
    check_pass_preserves(f"{RECOGNIZE},{DECOMPOSE}", case.graph, case.feeds)


# -- what must not be recognized ----------------------------------------------------------

def _gelu_with_leak() -> Graph:
    b = _B(0)
    x = b.g.add_input("x0", TensorType(F32, (3, 4)))
    e = b.node("elementwise.erf", [b.node("elementwise.div", [x, b.c(math.sqrt(2))])])
    y = b.node("elementwise.mul", [b.node("elementwise.mul", [x, b.node("elementwise.add", [e, b.c(1.0)])]), b.c(0.5)])
    b.g.outputs = [y, e]  # the erf value is needed outside the chain
    return b.g


def test_chain_with_outside_use_is_kept():
    g = _gelu_with_leak()
    after = check_pass_preserves("recognize-gelu", g, _feeds(g))
    assert "nn.gelu" not in ops(after)


def test_gelu_wrong_constant_is_kept():
    b = _B(0)
    x = b.g.add_input("x0", TensorType(F32, (3, 4)))
    e = b.node("elementwise.erf", [b.node("elementwise.div", [x, b.c(1.5)])])
    b.g.outputs = [b.node("elementwise.mul", [b.node("elementwise.mul", [x, b.node("elementwise.add", [e, b.c(1.0)])]), b.c(0.5)])]
    assert "nn.gelu" not in ops(check_pass_preserves("recognize-gelu", b.g, _feeds(b.g)))


def test_attention_broadcast_mask_is_kept():
    """A mask with last dim 1 broadcasts in Add but nn.attention would pad it with -inf."""
    b = _B(0)
    q, k, v = (b.g.add_input(n, TensorType(F32, (1, 2, 3, 4))) for n in "qkv")
    s = b.node("linalg.matmul", [q, b.node("tensor.transpose", [k], {"perm": [0, 1, 3, 2]})])
    s = b.node("elementwise.add", [s, b.c(np.zeros((3, 1)))])
    b.g.outputs = [b.node("linalg.matmul", [b.node("nn.softmax", [s], {"axis": -1}), v])]
    assert "nn.attention" not in ops(check_pass_preserves("recognize-attention", b.g, _feeds(b.g)))


def test_layernorm_over_leading_axes_is_kept():
    b = _B(0)
    x = b.g.add_input("x0", TensorType(F32, (3, 4)))
    ax = b.g.add_constant(np.array([0], dtype=np.int64))
    d = b.node("elementwise.sub", [x, b.node("reduce.mean", [x, ax], {"keepdims": 1})])
    var = b.node("reduce.mean", [b.node("elementwise.mul", [d, d]), ax], {"keepdims": 1})
    b.g.outputs = [b.node("elementwise.div", [d, b.node("elementwise.sqrt", [b.node("elementwise.add", [var, b.c(1e-5)])])])]
    assert "nn.layer_normalization" not in ops(check_pass_preserves("recognize-layernorm", b.g, _feeds(b.g)))


def test_decompose_float16_layernorm_and_gelu():
    """Narrow floats: the decompositions compute in float32 as the fused kernels do."""
    g = Graph("main")
    x = g.add_input("x0", TensorType(DType.FLOAT16, (2, 8)))
    sc = g.add_constant(np.linspace(0.5, 1.5, 8).astype(np.float16))
    ln = g.add_node("nn.layer_normalization", [x, sc], {"axis": -1}, name="ln", provenance=("ln",), num_outputs=1)
    ge = g.add_node("nn.gelu", [ln.outputs[0]], name="ge", provenance=("ge",))
    g.outputs = [ge.output]
    feeds = {"x0": np.random.RandomState(0).uniform(-2, 2, (2, 8)).astype(np.float16)}
    after = check_pass_preserves("decompose-layernorm,decompose-gelu", g, feeds, tol=2e-3)
    assert {"nn.layer_normalization", "nn.gelu"}.isdisjoint(ops(after))


def test_recognize_inside_subgraph():
    """A GELU chain inside an If branch (reading the outer x) is recognized too."""
    g = Graph("main")
    x = g.add_input("x0", TensorType(F32, (3, 4)))
    cond = g.add_input("c", TensorType(DType.BOOL, ()))
    branches = []
    for label in ("then", "else"):
        sub = Graph(label, parent=g)
        c = lambda v, _s=sub: _s.add_constant(np.asarray(v, dtype=np.float32))  # noqa: E731
        n = lambda op, ins, _s=sub, _l=label: _s.add_node(op, ins, name=f"{_l}{len(_s.nodes)}",  # noqa: E731
                                                          provenance=(f"{_l}{len(_s.nodes)}",)).output
        e = n("elementwise.erf", [n("elementwise.div", [x, c(math.sqrt(2))])])
        sub.outputs = [n("elementwise.mul", [n("elementwise.mul", [x, n("elementwise.add", [e, c(1.0)])]), c(0.5)])]
        branches.append(sub)
    node = g.add_node("control.if", [cond], {"then_branch": branches[0], "else_branch": branches[1]},
                      name="if", provenance=("if",), output_types=[TensorType(F32, (3, 4))])
    g.outputs = [node.output]
    for flag in (True, False):
        feeds = {"x0": _feeds(g)["x0"], "c": np.array(flag)}
        after = check_pass_preserves("recognize-gelu", g, feeds)
    assert ops(after).count("nn.gelu") == 2


@pytest.mark.slow
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_torch_transformer_block(approximate):
    """A pre-norm transformer block exported by torch at opset 14 (LayerNorm and GELU
    decomposed, attention written out): all three are recognized, outputs kept, and the
    decompositions give the same outputs again."""
    torch = pytest.importorskip("torch")
    import io

    import qir

    class Block(torch.nn.Module):
        def __init__(self, d=16, h=2):
            super().__init__()
            self.h = h
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            self.ff1, self.ff2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)
            self.act = torch.nn.GELU(approximate=approximate)

        def forward(self, x, mask):
            B, S, D = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
            heads = lambda t: t.reshape(B, S, self.h, D // self.h).transpose(1, 2)  # noqa: E731
            q, k, v = heads(q), heads(k), heads(v)
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // self.h) + mask, dim=-1) @ v
            x = x + self.o(a.transpose(1, 2).reshape(B, S, D))
            return x + self.ff2(self.act(self.ff1(self.ln2(x))))

    torch.manual_seed(0)
    x, mask = torch.randn(2, 5, 16), torch.triu(torch.full((5, 5), -1e4), 1)
    buf = io.BytesIO()
    torch.onnx.export(Block().eval(), (x, mask), buf, opset_version=14, input_names=["x", "mask"],
                      output_names=["y"], dynamo=False)
    g = qir.load_onnx(buf.getvalue())
    feeds = {"x": x.numpy(), "mask": mask.numpy()}
    after = check_pass_preserves(f"infer-shapes,fold-constants,{RECOGNIZE},dce", g, feeds)
    found = ops(after)
    assert found.count("nn.layer_normalization") == 2 and found.count("nn.gelu") == 1
    assert found.count("nn.attention") == 1 and len(after.nodes) < len(g.nodes) // 2
    check_pass_preserves(f"infer-shapes,fold-constants,{RECOGNIZE},dce,{DECOMPOSE}", g, feeds)
