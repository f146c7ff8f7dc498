"""Cross-layer equalization: outputs unchanged (vs the reference interpreter before the pass, vs
onnxruntime and torch on the source models), weight ranges of each equalized pair balanced, and
W8 fake-quantized models closer to float afterwards."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import qir
import qir.passes
from qir.ir.graph import Graph
from qir.ir.interpreter import Interpreter
from qir.ir.types import DType, TensorType
from qir.ir.verifier import verify
from qir.passes.quantize.equalize import equalize_cross_layer
from qir.passes.quantize.params import fake_quantize, weight_params
from tests.passes.helpers import PROPERTY_SETTINGS
from tests.passes.strategies import cnn_graphs

F32 = DType.FLOAT32
CONVS = ("nn.conv", "fused.conv")
GEMMS = ("linalg.gemm", "fused.gemm")


# -- independent range measures (explicit loops, not the pass's reshapes) ---------------------

def out_ranges(node) -> np.ndarray:
    w = node.inputs[1].const.astype(np.float64)
    if node.op in GEMMS and not node.attrs.get("transB", 0):
        w = w.T
    return np.array([np.abs(w[o]).max() for o in range(w.shape[0])])


def in_ranges(node, channels: int) -> np.ndarray:
    """max |w| over everything that reads input channel c (a channel may feed several gemm
    features after a flatten)."""
    w = node.inputs[1].const.astype(np.float64)
    r = np.zeros(channels)
    if node.op in CONVS:
        group = int(node.attrs.get("group", 1))
        m, cg = w.shape[:2]
        for o in range(m):
            g = o // (m // group)
            for c in range(cg):
                r[g * cg + c] = max(r[g * cg + c], np.abs(w[o, c]).max())
        return r
    if node.op in GEMMS and node.attrs.get("transB", 0):
        w = w.T  # [K, N]
    per = w.shape[0] // channels
    for f in range(w.shape[0]):
        r[f // per] = max(r[f // per], np.abs(w[f]).max())
    return r


def layers(graph: Graph):
    return [n for n in graph.nodes if n.op in CONVS + GEMMS]


def spread(r1: np.ndarray, r2: np.ndarray) -> float:
    """max/min over live channels of r1_i / r2_i: 1 when every channel is balanced."""
    live = (r1 > 1e-12) & (r2 > 1e-12)
    q = r1[live] / r2[live]
    return float(q.max() / q.min()) if q.size else 1.0


def balanced(r1: np.ndarray, r2: np.ndarray, rtol: float = 1e-3) -> None:
    """Every live channel has the same range on both sides of the pair."""
    live = (r1 > 1e-12) & (r2 > 1e-12)
    np.testing.assert_allclose(r1[live], r2[live], rtol=rtol)


def close(after, before, rtol=1e-4):
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max() + 1e-6))


# -- random conv chains ------------------------------------------------------------------------

#: Junctions between two layers: (name, whether CLE may equalize across it).
JUNCTIONS = {"none": True, "relu": True, "leaky_relu": True, "prelu": True, "clip0": True,
             "max_pool": True, "avg_pool": True, "relu_pool": True, "relu6": False, "sigmoid": False}


@st.composite
def chains(draw):
    """x → conv (→ junction → conv)* [→ global pool → flatten → gemm (→ relu → gemm)], with
    output channels of wildly different magnitudes; returns (graph, feeds, equalizable per
    junction)."""
    rng = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))
    g = Graph("chain")
    c, h, w = draw(st.integers(1, 5)), draw(st.integers(4, 7)), draw(st.integers(4, 7))
    x = g.add_input("x", TensorType(F32, (2, c, h, w)))
    feeds = {"x": rng.uniform(-2, 2, (2, c, h, w)).astype(np.float32)}
    n_conv = draw(st.integers(1, 4))
    expect = []
    y = x
    for k in range(n_conv):
        if k:
            name = draw(st.sampled_from(sorted(JUNCTIONS)))
            y = _junction(g, y, name, rng)
            expect.append(JUNCTIONS[name])
        kind = draw(st.sampled_from(["dense", "dense", "depthwise", "grouped"]))
        group = 1
        if kind == "depthwise" and c > 1:
            group, m = c, c
        elif kind == "grouped" and c % 2 == 0:
            group, m = 2, 2 * draw(st.integers(1, 3))
        else:
            m = draw(st.integers(1, 6))
        kh = draw(st.sampled_from([1, 3]))
        wt = rng.normal(0, 1 / math.sqrt(c // group * kh * kh), (m, c // group, kh, kh))
        wt *= 10.0 ** rng.uniform(-1.5, 1.5, (m, 1, 1, 1))  # imbalanced output channels
        ins = [y, g.add_constant(wt.astype(np.float32))]
        if draw(st.booleans()):
            ins.append(g.add_constant(rng.uniform(-0.5, 0.5, m).astype(np.float32)))
        y = g.add_node("nn.conv", ins, {"group": group, "kernel_shape": (kh, kh),
                                        "pads": (kh // 2,) * 4, "strides": (1, 1)}).output
        c = m
    if draw(st.booleans()):
        y = g.add_node("nn.global_average_pool", [y]).output
        y = g.add_node("tensor.flatten", [y], {"axis": 1}).output
        expect.append(True)
        for last in range(draw(st.integers(1, 2))):
            if last:
                y = g.add_node("nn.relu", [y]).output
                expect.append(True)
            n = draw(st.integers(1, 5))
            trans = draw(st.booleans())
            b = rng.normal(0, 1, (n, c) if trans else (c, n)) * 10.0 ** rng.uniform(-1, 1)
            y = g.add_node("linalg.gemm", [y, g.add_constant(b.astype(np.float32)),
                                           g.add_constant(rng.uniform(-1, 1, n).astype(np.float32))],
                           {"transB": int(trans)}).output
            c = n
    g.outputs = [y]
    return g, feeds, expect


def _junction(g, y, name, rng):
    def f32(v):
        return g.add_constant(np.asarray(v, dtype=np.float32))
    pool = {"kernel_shape": (2, 2), "strides": (1, 1), "pads": (1, 1, 0, 0)}
    ops = {
        "none": lambda: y,
        "relu": lambda: g.add_node("nn.relu", [y]).output,
        "leaky_relu": lambda: g.add_node("nn.leaky_relu", [y], {"alpha": 0.2}).output,
        "prelu": lambda: g.add_node("nn.prelu", [y, f32(rng.uniform(0, 0.5, (y.type.shape[1], 1, 1)))]).output,
        "clip0": lambda: g.add_node("elementwise.clip", [y, f32(0.0)]).output,
        "relu6": lambda: g.add_node("elementwise.clip", [y, f32(0.0), f32(6.0)]).output,
        "sigmoid": lambda: g.add_node("nn.sigmoid", [y]).output,
        "max_pool": lambda: g.add_node("nn.max_pool", [y], pool, num_outputs=1).output,
        "avg_pool": lambda: g.add_node("nn.average_pool", [y], {**pool, "count_include_pad": 1}).output,
        "relu_pool": lambda: g.add_node("nn.max_pool", [g.add_node("nn.relu", [y]).output], pool,
                                        num_outputs=1).output,
    }
    return ops[name]()


@settings(PROPERTY_SETTINGS, max_examples=50)
@given(chains(), st.booleans())
def test_cle_keeps_outputs_and_balances_every_pair(case, fuse):
    graph, feeds, expect = case
    if fuse:  # -O3: bias and relu/leaky/clip fused into fused.conv / fused.gemm
        qir.passes.run(graph, opt_level=3)
    before = Interpreter(graph).run(feeds)
    ls = layers(graph)
    assert len(ls) == len(expect) + 1
    pairs_before = [(out_ranges(a), in_ranges(b, out_ranges(a).size)) for a, b in zip(ls, ls[1:])]
    weights_before = [n.inputs[1].const.copy() for n in ls]

    pairs = equalize_cross_layer(graph)

    verify(graph)
    close(Interpreter(graph).run(feeds), before)
    assert pairs == sum(expect)
    for k, (a, b) in enumerate(zip(ls, ls[1:])):
        r1, r2 = out_ranges(a), in_ranges(b, out_ranges(a).size)
        if expect[k]:
            # Balanced: every live channel's range is the same on both sides ...
            balanced(r1, r2)
            # ... which is at least as balanced as before.
            assert spread(r1, r2) <= spread(*pairs_before[k]) * (1 + 1e-6)
    for k, n in enumerate(ls):  # layers in no equalizable junction keep their weights
        touched = (k > 0 and expect[k - 1]) or (k < len(expect) and expect[k])
        if not touched:
            assert n.inputs[1].const is weights_before[k] or np.array_equal(n.inputs[1].const,
                                                                            weights_before[k])


@settings(PROPERTY_SETTINGS, max_examples=40)
@given(cnn_graphs(max_blocks=6))
def test_cle_keeps_outputs_of_random_cnns(case):
    """Residuals, concats, clips, shared constants, graph outputs in the middle: whatever CLE
    touches, the -O3 graph computes the same outputs."""
    graph, feeds = case
    qir.passes.run(graph, opt_level=3)
    before = Interpreter(graph).run(feeds)
    qir.passes.run(graph, "equalize-cross-layer")
    verify(graph)
    close(Interpreter(graph).run(feeds), before)


# -- a badly imbalanced pair, built in ONNX, checked against onnxruntime ---------------------

def _imbalanced_pair(relu6: bool = False) -> onnx.ModelProto:
    rng = np.random.RandomState(0)
    w1 = rng.normal(0, 1 / 6, (8, 4, 3, 3)).astype(np.float32)
    b1 = rng.uniform(-0.2, 0.2, 8).astype(np.float32)
    w2 = rng.normal(0, 1 / math.sqrt(72), (6, 8, 3, 3)).astype(np.float32)
    b2 = rng.uniform(-0.2, 0.2, 6).astype(np.float32)
    # The same function, badly scaled: channels 0..3 of conv1 ×100, their uses in conv2 ÷100.
    w1[:4] *= 100
    b1[:4] *= 100
    w2[:, :4] /= 100
    act = (helper.make_node("Clip", ["y1", "zero", "six"], ["a1"]) if relu6
           else helper.make_node("Relu", ["y1"], ["a1"]))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], pads=[1, 1, 1, 1]), act,
             helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"),
              (np.array(0, np.float32), "zero"), (np.array(6, np.float32), "six")]]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _load(model: onnx.ModelProto, tmp_path, name="m.onnx", opt_level=3) -> Graph:
    path = tmp_path / name
    onnx.save(model, path)
    graph = qir.load_onnx(str(path))
    qir.passes.run(graph, opt_level=opt_level)
    return graph


def fake_quantized(graph: Graph, bitwidth: int = 8, per_channel: bool = False) -> Graph:
    """A copy whose conv/gemm weights are fake-quantized with the integer lowering's rule."""
    q = graph.copy()
    for n in layers(q):
        w = n.inputs[1].const
        axis = (0 if n.op in CONVS or n.attrs.get("transB", 0) else 1) if per_channel else None
        n.set_input(1, q.add_constant(fake_quantize(w, weight_params(w, axis, bitwidth), narrow=True)))
    return q


def _error(graph: Graph, reference: list[np.ndarray], feeds: list[dict], **fq) -> float:
    q = fake_quantized(graph, **fq)
    errs = [np.abs(Interpreter(q).run(f)[0] - r).mean() for f, r in zip(feeds, reference)]
    return float(np.mean(errs))


@pytest.mark.parametrize("per_channel", [False, True])
def test_imbalanced_pair_quantizes_far_better_after_cle(tmp_path, per_channel):
    model = _imbalanced_pair()
    rng = np.random.RandomState(1)
    feeds = [{"x": rng.normal(0, 1, (4, 4, 8, 8)).astype(np.float32)} for _ in range(3)]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = [sess.run(None, f)[0] for f in feeds]
    graph = _load(model, tmp_path)
    before = _error(graph, reference, feeds, per_channel=per_channel)

    assert equalize_cross_layer(graph) == 1
    close([Interpreter(graph).run(f)[0] for f in feeds], reference)
    (a, b) = layers(graph)
    balanced(out_ranges(a), in_ranges(b, 8), rtol=1e-5)
    after = _error(graph, reference, feeds, per_channel=per_channel)
    assert after < before / 5, (before, after)


@pytest.mark.parametrize("opt_level", [1, 3])
def test_relu6_is_skipped_unless_replaced(tmp_path, opt_level):
    model = _imbalanced_pair(relu6=True)
    graph = _load(model, tmp_path, opt_level=opt_level)
    names = {v.name for n in graph.nodes for v in n.outputs}
    kept = graph.copy()
    assert equalize_cross_layer(graph) == 0
    assert [n.inputs[1].const is m.inputs[1].const for n, m in zip(layers(graph), layers(kept))] == [True, True]

    # AIMET's way: ReLU6 becomes ReLU. The result is the model with Relu, as onnxruntime runs it.
    assert equalize_cross_layer(graph, replace_relu6=True) == 1
    assert all(n.attrs.get("activation") != "clip" for n in layers(graph))
    assert not any(n.op == "elementwise.clip" for n in graph.nodes)
    assert {v.name for n in graph.nodes for v in n.outputs} == names  # tensors keep their names
    relu_model = _imbalanced_pair(relu6=False)
    x = np.random.RandomState(2).normal(0, 1, (4, 4, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(relu_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    close(Interpreter(graph).run({"x": x}), ref)
    verify(graph)


def test_pass_is_registered_and_keeps_names_and_provenance(tmp_path):
    graph = _load(_imbalanced_pair(), tmp_path)
    names = [(n.name, n.provenance) for n in graph.nodes]
    out = [v.name for v in graph.outputs]
    old_weights = {v.name for v in graph.constants.values()}
    from qir.passes import PassContext

    qir.passes.run(graph, "equalize-cross-layer", ctx=PassContext(verify_each=True))
    assert [(n.name, n.provenance) for n in graph.nodes] == names
    assert [v.name for v in graph.outputs] == out
    # Changed weights are new constants; the old ones (now unread) are gone.
    assert not old_weights & {n.inputs[1].name for n in layers(graph)}
    assert all(v.uses for v in graph.constants.values())
    assert "equalize-cross-layer" not in qir.passes.standard_pipeline(3)


def test_shared_weights_are_not_mutated(tmp_path):
    graph = _load(_imbalanced_pair(), tmp_path)
    arrays = {v.name: (v.const, v.const.copy()) for v in graph.constants.values()}
    equalize_cross_layer(graph)
    for array, copy in arrays.values():
        np.testing.assert_array_equal(array, copy)


# -- MobileNet-style depthwise separable network from torch ------------------------------------

def mobilenet_like(tmp_path, seed: int = 0, blocks: int = 3):
    """conv3x3 → BN → ReLU → [dw3x3 → BN → ReLU → pw1x1 → BN → ReLU] × blocks → pool → fc, with
    BatchNorm statistics spread over decades (the channel imbalance folding leaves in real
    networks); exported by torch (TorchScript exporter, opset 17). Returns (torch model, graph
    after -O3)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(seed)

    def bn(c):
        b = nn.BatchNorm2d(c)
        with torch.no_grad():
            b.running_var.copy_(10.0 ** (torch.rand(c) * 4 - 2))
            b.running_mean.uniform_(-0.5, 0.5)
            b.weight.copy_(10.0 ** (torch.rand(c) * 2 - 1))
            b.bias.uniform_(-0.5, 0.5)
        return b

    chans = [3, 8, 16, 16, 24][: blocks + 2]
    mods = [nn.Conv2d(3, chans[1], 3, stride=2, padding=1, bias=False), bn(chans[1]), nn.ReLU()]
    for i in range(1, blocks + 1):
        c, o = chans[i], chans[min(i + 1, len(chans) - 1)]
        mods += [nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), bn(c), nn.ReLU(),
                 nn.Conv2d(c, o, 1, bias=False), bn(o), nn.ReLU()]
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[min(blocks + 1, len(chans) - 1)], 10)]
    model = nn.Sequential(*mods).eval()
    path = tmp_path / "mobilenet_like.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    graph = qir.load_onnx(str(path))
    qir.passes.run(graph, opt_level=3)
    return model, graph


def _torch_run(model, x):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_mobilenet_like_equalizes_depthwise_triples(tmp_path):
    model, graph = mobilenet_like(tmp_path)
    rng = np.random.RandomState(3)
    feeds = [{"input": rng.normal(0, 1, (2, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    reference = [_torch_run(model, f["input"]) for f in feeds]
    before = _error(graph, reference, feeds)
    before_each = _errors_one_layer_at_a_time(graph, reference, feeds)
    dws = [n for n in layers(graph) if n.attrs.get("group", 1) > 1]
    assert len(dws) == 3

    # conv→dw→pw, pw→dw→pw, pw→dw→pw (two pairs each), pw→(pool, flatten)→fc.
    assert equalize_cross_layer(graph) == 7
    close([Interpreter(graph).run(f)[0] for f in feeds], reference)
    ls = layers(graph)
    for a, b in zip(ls, ls[1:]):
        r1 = out_ranges(a)
        balanced(r1, in_ranges(b, r1.size))
    for dw in dws:  # the depthwise conv's own range equals both neighbours'
        i = ls.index(dw)
        np.testing.assert_allclose(out_ranges(dw), out_ranges(ls[i - 1]), rtol=1e-3)
    # W8 per tensor: the end-to-end error falls (the last pw conv, balanced against the
    # classifier only, keeps most of what is left) and each layer alone errs far less.
    after = _error(graph, reference, feeds)
    assert after < 0.75 * before, (before, after)
    after_each = _errors_one_layer_at_a_time(graph, reference, feeds)
    assert after_each.sum() < before_each.sum() / 2, (before_each, after_each)


def _errors_one_layer_at_a_time(graph, reference, feeds) -> np.ndarray:
    """The output error with only layer k's weights fake-quantized (W8 per tensor), per k."""
    errors = []
    for k in range(len(layers(graph))):
        q = graph.copy()
        node = layers(q)[k]
        w = node.inputs[1].const
        node.set_input(1, q.add_constant(fake_quantize(w, weight_params(w, None, 8), narrow=True)))
        errors.append(np.mean([np.abs(Interpreter(q).run(f)[0] - r).mean() for f, r in zip(feeds, reference)]))
    return np.array(errors)
