"""Empirical bias correction: on held-out data the fake-quantized model's mean output error
shrinks (float outputs from torch / onnxruntime), the corrections are exactly the sequential
per-layer mean shifts (checked against a naive rerun-the-graph-per-layer implementation), and
only biases change."""

from __future__ import annotations


import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qir
import qir.passes
from qir.errors import InputError
from qir.ir.graph import Graph
from qir.ir.interpreter import Interpreter
from qir.ir.types import DType, TensorType
from qir.ir.verifier import verify
from qir.passes.quantize.bias_correction import correct_bias
from qir.passes.quantize.params import fake_quantize, weight_params
from tests.passes.quantize.test_equalize import _torch_run, fake_quantized, layers, mobilenet_like

F32 = DType.FLOAT32


def mean_output_bias(graph: Graph, reference: list[np.ndarray], feeds: list[dict], **fq) -> float:
    """|E[y_q − y_float]| per output unit over the feeds, averaged over units: the systematic
    error bias correction removes (W fake-quantized, everything else float)."""
    q = fake_quantized(graph, **fq)
    diff = np.concatenate([Interpreter(q).run(f)[0] - r for f, r in zip(feeds, reference)])
    return float(np.abs(diff.mean(axis=0)).mean())


def _feeds(seed: int, n: int, shape, name="input"):
    rng = np.random.RandomState(seed)
    return [{name: rng.normal(0, 1, shape).astype(np.float32)} for _ in range(n)]


def small_cnn(tmp_path, seed: int = 0):
    """conv-BN-ReLU ×3 (one strided) → pool → fc → ReLU → fc, BN statistics over decades, from
    torch (TorchScript exporter, opset 17)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(seed)

    def bn(c):
        b = nn.BatchNorm2d(c)
        with torch.no_grad():
            b.running_var.copy_(10.0 ** (torch.rand(c) * 2 - 1))
            b.running_mean.uniform_(-0.5, 0.5)
            b.bias.uniform_(-0.3, 0.3)
        return b

    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), bn(12), nn.ReLU(),
                          nn.Conv2d(12, 16, 3, stride=2, padding=1), bn(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), bn(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 10)).eval()
    path = tmp_path / "small_cnn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 12, 12),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return model, path


@pytest.mark.parametrize("bitwidth", [4, 8])
def test_bias_correction_shrinks_the_mean_error_on_held_out_data(tmp_path, bitwidth):
    model, path = small_cnn(tmp_path)
    graph = qir.load_onnx(str(path))
    qir.passes.run(graph, opt_level=3)
    calib, held_out = _feeds(1, 8, (4, 3, 12, 12)), _feeds(2, 8, (4, 3, 12, 12))
    reference = [_torch_run(model, f["input"]) for f in held_out]
    before = mean_output_bias(graph, reference, held_out, bitwidth=bitwidth, per_channel=False)
    weights = {n.name: n.inputs[1].const for n in layers(graph)}

    assert correct_bias(graph, calib, bitwidth=bitwidth, per_channel=False) == 5

    verify(graph)
    assert {n.name: n.inputs[1].const for n in layers(graph)} == weights  # only biases changed
    after = mean_output_bias(graph, reference, held_out, bitwidth=bitwidth, per_channel=False)
    assert after < 0.5 * before, (before, after)


def test_bias_correction_on_depthwise_separable_network(tmp_path):
    """MobileNet-style blocks, per-tensor W8: depthwise convs after BN folding lose the most."""
    model, graph = mobilenet_like(tmp_path)
    calib, held_out = _feeds(4, 8, (4, 3, 16, 16)), _feeds(5, 8, (4, 3, 16, 16))
    reference = [_torch_run(model, f["input"]) for f in held_out]
    before = mean_output_bias(graph, reference, held_out, bitwidth=8, per_channel=False)
    assert correct_bias(graph, calib, bitwidth=8, per_channel=False) == len(layers(graph))
    after = mean_output_bias(graph, reference, held_out, bitwidth=8, per_channel=False)
    assert after < 0.5 * before, (before, after)


# -- the definition, checked against a naive implementation ------------------------------------

def naive_corrections(graph: Graph, feeds: list[dict], bitwidth: int, per_channel: bool) -> list[np.ndarray]:
    """For each conv/gemm in order: rerun the whole graph with all weights fake-quantized and the
    biases corrected so far, capture the layer's output (the graph is unfused: that IS the
    pre-activation), and take the per-channel mean difference to the float graph's."""
    def capture(g, node_name):
        seen = []
        target = next(n for n in g.nodes if n.name == node_name).outputs[0]

        def hook(value, array):
            if value is target:
                seen.append(np.asarray(array, dtype=np.float64))
        for f in feeds:
            Interpreter(g, hook).run(f)
        return seen

    def channel_mean(arrays):
        return np.mean([a.mean(axis=tuple(i for i in range(a.ndim) if i != 1)) for a in arrays], axis=0)

    q = graph.copy()
    for n in layers(q):
        w = n.inputs[1].const
        axis = (0 if n.op.endswith("conv") or n.attrs.get("transB", 0) else 1) if per_channel else None
        n.set_input(1, q.add_constant(fake_quantize(w, weight_params(w, axis, bitwidth), narrow=True)))
    deltas = []
    for node in layers(graph):
        delta = channel_mean(capture(graph, node.name)) - channel_mean(capture(q, node.name))
        deltas.append(delta)
        qn = next(n for n in q.nodes if n.name == node.name)
        b = qn.inputs[2].const.astype(np.float64)
        qn.set_input(2, q.add_constant((b + delta).astype(np.float32)))
    return deltas


@pytest.mark.parametrize("per_channel", [False, True])
def test_corrections_are_the_sequential_mean_shifts(tmp_path, per_channel):
    """The one-pass side-by-side evaluation gives the naive O(layers²) answer, on the fused
    (-O3: pre-activation taken inside fused.conv/fused.gemm) and the unfused (-O1) graph."""
    _, path = small_cnn(tmp_path, seed=3)
    unfused = qir.load_onnx(str(path))
    qir.passes.run(unfused, opt_level=1)
    fused = qir.load_onnx(str(path))
    qir.passes.run(fused, opt_level=3)
    assert any(n.op.startswith("fused.") for n in fused.nodes)
    calib = _feeds(6, 4, (2, 3, 12, 12))
    expected = naive_corrections(unfused, calib, 4, per_channel)
    for graph in (unfused, fused):
        old = [n.inputs[2].const.astype(np.float64) for n in layers(graph)]
        correct_bias(graph, calib, bitwidth=4, per_channel=per_channel)
        got = [n.inputs[2].const.astype(np.float64) - b for n, b in zip(layers(graph), old)]
        assert len(got) == len(expected)
        for k, (g, e) in enumerate(zip(got, expected)):
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-5 * (1 + np.abs(e).max()), err_msg=f"layer {k}")


# -- layers without a bias, names, errors -----------------------------------------------------

def _no_bias_graph():
    rng = np.random.RandomState(0)
    g = Graph("nobias")
    x = g.add_input("x", TensorType(F32, (2, 3, 6, 6)))
    w1 = g.add_constant(rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32), "w1")
    y = g.add_node("nn.conv", [x, w1], {"pads": (1, 1, 1, 1)}, name="conv1", output_names=["c1"]).output
    y = g.add_node("nn.relu", [y], name="relu1", output_names=["r1"]).output
    y = g.add_node("nn.global_average_pool", [y], name="pool").output
    y = g.add_node("tensor.flatten", [y], {"axis": 1}, name="flat").output
    w2 = g.add_constant(rng.normal(0, 0.5, (5, 4)).astype(np.float32), "w2")
    y = g.add_node("linalg.gemm", [y, w2], name="fc", output_names=["logits"]).output
    g.outputs = [y]
    return g


def test_layers_without_bias_get_one_and_keep_names(tmp_path):
    g = _no_bias_graph()
    feeds = _feeds(7, 4, (2, 3, 6, 6), name="x")
    before = mean_output_bias(g, [Interpreter(g).run(f)[0] for f in feeds], feeds, bitwidth=4)
    reference = [Interpreter(g).run(f)[0] for f in feeds]

    assert correct_bias(g, feeds, bitwidth=4, per_channel=False) == 2

    verify(g)
    conv, fc = layers(g)
    assert (conv.name, conv.provenance, conv.outputs[0].name) == ("conv1", ("conv1",), "c1")
    assert (fc.name, fc.provenance, fc.outputs[0].name) == ("fc", ("fc",), "logits")
    assert [v.name for v in g.outputs] == ["logits"]
    assert conv.inputs[2].const.shape == (5,) and fc.inputs[2].const.shape == (4,)
    # On the calibration data itself the mean error is gone (up to float rounding).
    after = mean_output_bias(g, reference, feeds, bitwidth=4)
    assert after < 1e-3 * before + 1e-6, (before, after)


def test_onnx_model_against_onnxruntime(tmp_path):
    """A model written with onnx.helper: float reference from onnxruntime, a Gemm with C of
    shape [1, N] and beta = 0.5 (the correction goes into C / beta)."""
    rng = np.random.RandomState(1)
    w1 = (rng.normal(0, 0.3, (6, 2, 3, 3)) * 10.0 ** rng.uniform(-1, 1, (6, 1, 1, 1))).astype(np.float32)
    w2 = rng.normal(0, 0.4, (3, 6)).astype(np.float32)
    c2 = rng.normal(0, 0.1, (1, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y1"], ["a1"]),
             helper.make_node("GlobalAveragePool", ["a1"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "c2"], ["y"], transB=1, beta=0.5)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                               numpy_helper.from_array(c2, "c2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    g = qir.load_onnx(str(path))
    qir.passes.run(g, opt_level=3)
    calib, held_out = _feeds(8, 16, (2, 2, 5, 5), "x"), _feeds(9, 16, (2, 2, 5, 5), "x")
    reference = [sess.run(None, f)[0] for f in held_out]
    before = mean_output_bias(g, reference, held_out, bitwidth=4)
    assert correct_bias(g, calib, bitwidth=4, per_channel=False) == 2
    fc = layers(g)[-1]
    assert fc.inputs[2].const.shape == (1, 3)
    after = mean_output_bias(g, reference, held_out, bitwidth=4)
    assert after < 0.5 * before, (before, after)


def test_bad_calibration_sets_are_clear_errors():
    g = _no_bias_graph()
    with pytest.raises(InputError, match="empty calibration set"):
        correct_bias(g, [])
    with pytest.raises(InputError, match="list of feeds"):
        correct_bias(g, {"x": np.zeros((2, 3, 6, 6), np.float32)})
    with pytest.raises(InputError, match="feed 1 lacks graph input.* x"):
        correct_bias(g, [{"x": np.zeros((2, 3, 6, 6), np.float32)}, {"y": np.zeros(1)}])
