"""The fusion passes (qir/passes/fusion.py) and the fused ops (qir/ir/ops/fused.py).

- Golden before/after IR (tests/passes/golden/fusion/*.qir, QIR_UPDATE_GOLDEN=1 rewrites them).
- Property tests: random valid graphs (tests/passes/strategies.py) compute the same outputs on
  the reference interpreter before and after each pass, verify-each on; tolerance rtol 1e-4,
  atol 1e-5, except rtol 2e-3 for the passes that fold constants into weights (BatchNorm →
  weights or Mul/Add reassociates float32 arithmetic, and the random graphs round-trip values
  through float16, which turns a last-bit float32 difference into one float16 ulp, ~1e-3).
- The fused ops' decompositions and the ONNX export of fused graphs (standard ops only,
  onnx.checker clean, same outputs in onnxruntime).
- Slow: the nine light models and the digits model keep their outputs through the passes (the
  tensor feeding the final softmax within rtol 1e-3), each pass runs well under a second, and the
  exported result passes onnx.checker and runs in onnxruntime with the same outputs.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from qir.ir.graph import Graph
from qir.ir.opdef import get_op
from qir.ir.ops.fused import activation_of, expand_all, expand_node
from qir.ir.types import DType, TensorType
from qir.ir.verifier import verify
from qir.passes import PassContext, make_pass
from qir.ir.interpreter import Interpreter
from tests.passes.helpers import (GOLDEN_DIR, PROPERTY_SETTINGS, assert_provenance, check_pass_preserves,
                                  copy_graph, golden, random_feeds, run_graph)
from tests.passes.strategies import cnn_graphs, elementwise_graphs, graphs

GOLDEN = GOLDEN_DIR / "fusion"
F32 = DType.FLOAT32
#: Tolerance of passes that reassociate float arithmetic (see the module docstring).
FOLD_RTOL = 2e-3
FUSION_PASSES = ["fold-batchnorm", "fuse-conv-activation", "fuse-epilogue", "fold-pad", "matmul-add-to-gemm"]


def ops_of(graph: Graph) -> collections.Counter:
    return collections.Counter(n.op for n in graph.walk())


# -- golden before/after ----------------------------------------------------------------------

def test_golden_conv_bn_relu_folds_then_fuses():
    g = golden(GOLDEN / "conv_bn_relu.qir", "fold-batchnorm", GOLDEN / "conv_bn_relu.folded.qir")
    assert ops_of(g) == {"nn.conv": 1, "nn.relu": 1}
    g = golden(GOLDEN / "conv_bn_relu.qir", "fold-batchnorm,fuse-epilogue")
    (fused,) = g.nodes
    assert fused.op == "fused.conv" and fused.attrs["activation"] == "relu"
    # A fused conv names its Conv, BatchNormalization and Relu.
    assert set(fused.provenance) == {"conv", "bn", "relu"}
    assert [v.name for v in g.outputs] == ["y"]


def test_golden_dense_bn():
    g = golden(GOLDEN / "dense_bn.qir", "fold-batchnorm")
    assert ops_of(g) == {"linalg.gemm": 2}


def test_golden_standalone_bn_merges_with_scale_and_shift():
    g = golden(GOLDEN / "bn_affine.qir", "fold-batchnorm")
    assert ops_of(g) == {"elementwise.mul": 1, "elementwise.add": 1, "nn.relu": 1}
    assert_provenance(g, {"bn", "mul", "add", "relu"})


def test_golden_epilogue():
    g = golden(GOLDEN / "epilogue.qir", "fuse-epilogue")
    ops = ops_of(g)
    # conv1 + bias + residual + relu, conv2 + clip → two fused convs; conv3 is read twice (by
    # its relu and the add), so nothing fuses into it; the gemm takes its relu.
    assert ops["fused.conv"] == 2 and ops["fused.gemm"] == 1 and ops["nn.conv"] == 1
    first = g.find_node("conv1")
    assert first is None or first.op == "fused.conv"
    fused = [n for n in g.nodes if n.op == "fused.conv" and "relu1" in n.provenance]
    assert len(fused) == 1 and set(fused[0].provenance) == {"conv1", "bias_add", "residual", "relu1"}


def test_golden_epilogue_max_ops_1():
    g = golden(GOLDEN / "epilogue.qir", "fuse-epilogue{max-ops=1}", GOLDEN / "epilogue.max1.qir")
    for node in g.nodes:
        if node.op == "fused.conv":
            a = get_op(node.op).resolve_attrs(node.attrs)
            assert (len(node.inputs) > 3 and node.inputs[3] is not None) + (a["activation"] != "none") <= 1


def test_golden_conv_activation_only():
    g = golden(GOLDEN / "epilogue.qir", "fuse-conv-activation", GOLDEN / "epilogue.activation.qir")
    assert "elementwise.sum" in ops_of(g)  # no residual fusion in this pass
    assert "fused.gemm" not in ops_of(g)


def test_golden_fold_pad():
    g = golden(GOLDEN / "pads.qir", "fold-pad,dce")
    ops = ops_of(g)
    assert ops["tensor.pad"] == 1  # the Pad of value 1 cannot fold into the conv
    conv = next(n for n in g.nodes if n.op == "nn.conv" and "pad1" in n.provenance)
    assert tuple(conv.attrs["pads"]) == (1, 3, 1, 1)  # Pad [H 1+1, W 2+0] + conv [H 0+0, W 1+1]
    pool = next(n for n in g.nodes if n.op == "nn.average_pool")
    assert pool.attrs["count_include_pad"] == 1


def test_golden_matmul_add():
    g = golden(GOLDEN / "matmul_add.qir", "matmul-add-to-gemm")
    assert ops_of(g) == {"linalg.gemm": 1, "linalg.matmul": 1, "elementwise.add": 1}


# -- edge cases ---------------------------------------------------------------------------------

def _conv_graph(residual_shape=None, uses: int = 1):
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (1, 2, 4, 4)))
    w = g.add_constant(np.ones((2, 2, 1, 1), np.float32), "w")
    conv = g.add_node("nn.conv", [x, w], name="conv")
    outs = []
    if residual_shape is not None:
        r = g.add_input("r", TensorType(F32, residual_shape))
        add = g.add_node("elementwise.add", [conv.output, r], name="add")
        outs.append(add.output)
    else:
        relu = g.add_node("nn.relu", [conv.output], name="relu")
        outs.append(relu.output)
    if uses > 1:
        outs.append(conv.output)
    g.outputs = outs
    return g


def test_residual_that_widens_the_output_is_not_fused():
    g = _conv_graph(residual_shape=(2, 2, 4, 4))
    after = check_pass_preserves("fuse-epilogue", g)
    assert "fused.conv" not in ops_of(after)


def test_residual_that_broadcasts_is_fused():
    g = _conv_graph(residual_shape=(1, 1, 4, 4))
    after = check_pass_preserves("fuse-epilogue", g)
    assert ops_of(after) == {"fused.conv": 1}


def test_conv_that_is_a_graph_output_is_not_fused():
    g = _conv_graph(uses=2)
    after = check_pass_preserves("fuse-epilogue", g)
    assert ops_of(after) == {"nn.conv": 1, "nn.relu": 1}


def test_bn_after_conv_with_runtime_weights_scales_the_weights():
    # Weights that are not constants (computed at run time, or a graph input): the BN becomes
    # a Mul of the weights, so no BN is left and the node count does not grow; a following
    # per-channel Mul merges into that weight Mul and an Add into the bias.
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (1, 2, 4, 4)))
    w = g.add_input("w", TensorType(F32, (3, 2, 3, 3)))
    conv = g.add_node("nn.conv", [x, w], {"pads": (1, 1, 1, 1)}, name="conv")
    rng = np.random.RandomState(3)
    params = [g.add_constant(rng.uniform(0.5, 2, 3).astype(np.float32)) for _ in range(4)]
    bn = g.add_node("nn.batch_normalization", [conv.output, *params], name="bn")
    mul = g.add_node("elementwise.mul", [bn.output, g.add_constant(rng.randn(3, 1, 1).astype(np.float32))], name="mul")
    add = g.add_node("elementwise.add", [mul.output, g.add_constant(rng.randn(1, 3, 1, 1).astype(np.float32))],
                     name="add", output_names=["y"])
    g.outputs = [add.output]
    after = check_pass_preserves("fold-batchnorm", g, rtol=FOLD_RTOL)
    assert ops_of(after) == {"nn.conv": 1, "elementwise.mul": 1}
    (wmul,) = [n for n in after.nodes if n.op == "elementwise.mul"]
    assert wmul.inputs[0].name == "w" and set(wmul.provenance) == {"conv", "bn", "mul"}


def test_training_mode_bn_is_left_alone():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (2, 3, 2, 2)))
    p = [g.add_constant(np.full(3, v, np.float32)) for v in (1.0, 0.0, 0.0, 1.0)]
    bn = g.add_node("nn.batch_normalization", [x, *p], {"training_mode": 1}, name="bn", num_outputs=1)
    g.outputs = [bn.output]
    assert not make_pass("fold-batchnorm").run(g, PassContext())


def test_activation_of_clip_needs_constant_bounds():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (3,)))
    hi = g.add_input("hi", TensorType(F32, ()))
    lo = g.add_constant(np.float32(0))
    assert activation_of(g.add_node("elementwise.clip", [x, lo], name="c1")) == ("clip", (0.0, np.inf))
    assert activation_of(g.add_node("elementwise.clip", [x, lo, hi], name="c2")) is None
    assert activation_of(g.add_node("nn.leaky_relu", [x], {"alpha": 0.5}, name="l")) == ("leaky_relu", (0.5,))


# -- fused ops: kernels equal their decompositions ------------------------------------------------

@pytest.mark.parametrize("act,params", [("none", ()), ("relu", ()), ("clip", (0.0, 6.0)), ("clip", (-np.inf, 0.5)),
                                        ("leaky_relu", (0.2,)), ("sigmoid", ()), ("hard_sigmoid", (0.3, 0.4))])
@pytest.mark.parametrize("residual", [False, True])
def test_fused_conv_decomposition_computes_the_same(act, params, residual):
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (1, 3, 5, 5)))
    rng = np.random.RandomState(1)
    w = g.add_constant(rng.randn(4, 3, 3, 3).astype(np.float32))
    b = g.add_constant(rng.randn(4).astype(np.float32))
    inputs = [x, w, b]
    if residual:
        inputs.append(g.add_input("r", TensorType(F32, (1, 4, 1, 5))))
    node = g.add_node("fused.conv", inputs, {"pads": (1, 1, 1, 1), "strides": (2, 1), "activation": act,
                                              "activation_params": params}, name="f", provenance=["c", "r"],
                      output_names=["y"])
    g.outputs = [node.output]
    verify(g)
    feeds = random_feeds(g)
    expected = run_graph(g, feeds)
    expanded = copy_graph(g)
    expand_node(expanded.find_node("f"))
    verify(expanded)
    assert "fused.conv" not in ops_of(expanded) and [v.name for v in expanded.outputs] == ["y"]
    assert all(n.provenance == ("c", "r") for n in expanded.nodes)
    np.testing.assert_array_equal(run_graph(expanded, feeds)[0], expected[0])


def test_fused_gemm_decomposition_computes_the_same():
    g = Graph("t")
    a = g.add_input("a", TensorType(F32, (3, 4)))
    w = g.add_constant(np.random.RandomState(2).randn(5, 4).astype(np.float32))
    node = g.add_node("fused.gemm", [a, w], {"transB": 1, "alpha": 0.5, "activation": "tanh"}, name="fg")
    g.outputs = [node.output]
    feeds = random_feeds(g)
    expected = run_graph(g, feeds)
    assert expand_all(g, lambda n: n.op.startswith("fused.")) == 1
    verify(g)
    np.testing.assert_array_equal(run_graph(g, feeds)[0], expected[0])


def test_fused_conv_rejects_unknown_activation():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (1, 1, 3, 3)))
    w = g.add_constant(np.ones((1, 1, 1, 1), np.float32))
    with pytest.raises(Exception, match="unknown epilogue activation"):
        g.add_node("fused.conv", [x, w], {"activation": "swishy"})


# -- property tests ----------------------------------------------------------------------------------

@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_fold_batchnorm_keeps_outputs(case):
    check_pass_preserves("fold-batchnorm", case.graph, case.feeds, rtol=FOLD_RTOL)


@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_fuse_epilogue_keeps_outputs(case):
    check_pass_preserves("fold-batchnorm,fuse-epilogue", case.graph, case.feeds, rtol=FOLD_RTOL)


@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_fuse_conv_activation_keeps_outputs(case):
    check_pass_preserves("fuse-conv-activation", case.graph, case.feeds)


@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_fold_pad_keeps_outputs(case):
    check_pass_preserves("fold-pad", case.graph, case.feeds)


@PROPERTY_SETTINGS
@given(graphs())
def test_matmul_add_to_gemm_keeps_outputs(case):
    check_pass_preserves("matmul-add-to-gemm", case.graph, case.feeds)


@PROPERTY_SETTINGS
@given(elementwise_graphs())
def test_fold_batchnorm_on_elementwise_graphs_keeps_outputs(case):
    # Mul/Add chains with constants merge here.
    check_pass_preserves("fold-batchnorm", case.graph, case.feeds, rtol=FOLD_RTOL)


@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_all_fusion_passes_then_export_keep_outputs(case):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from qir.frontends.onnx.exporter import export_onnx

    after = check_pass_preserves(",".join(FUSION_PASSES), case.graph, case.feeds, rtol=FOLD_RTOL)
    model = export_onnx(after)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, case.feeds)
    for ours, t in zip(run_graph(case.graph, case.feeds), theirs):
        np.testing.assert_allclose(t, ours, rtol=FOLD_RTOL, atol=1e-4)


# -- export of fused graphs --------------------------------------------------------------------------

def test_export_decomposes_fused_ops_and_leaves_the_graph_alone():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from qir.frontends.onnx.exporter import export_onnx
    from tests.passes.helpers import _read_graph

    g = _read_graph(GOLDEN / "epilogue.qir")
    feeds = random_feeds(g)
    expected = run_graph(g, feeds)
    make_pass("fuse-epilogue").run(g, PassContext())
    before = str(g)
    model = export_onnx(g)
    assert str(g) == before, "export must not change the graph"
    onnx.checker.check_model(model, full_check=True)
    types = collections.Counter(n.op_type for n in model.graph.node)
    assert types == {"Conv": 3, "Add": 2, "Relu": 3, "Clip": 1, "Gemm": 1}  # residual + "twice"
    assert [o.name for o in model.graph.output] == ["y1", "y2", "y3", "y4"]
    conv1 = next(n for n in model.graph.node if n.op_type == "Conv" and "relu1" in n.doc_string)
    assert "conv1" in conv1.doc_string and "residual" in conv1.doc_string
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for ours, theirs in zip(expected, sess.run(None, feeds)):
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


# -- real models (slow) -----------------------------------------------------------------------------

def _model_cases():
    from tests.models.test_light_models import MODELS

    cases = [pytest.param(m["path"], id=m["name"]) for m in MODELS]
    digits = Path(__file__).parents[2] / "examples" / "digits" / "digits.onnx"
    return cases + [pytest.param(digits, id="digits")]


def _probe(graph: Graph, feeds, name: str) -> np.ndarray:
    captured = {}

    def hook(value, array):
        if value.name == name:
            captured[name] = np.array(array, copy=True)

    outs = Interpreter(graph, hook).run(feeds)
    return captured.get(name, outs[0])


@pytest.mark.slow
@pytest.mark.parametrize("path", _model_cases())
def test_real_model_keeps_outputs_fast_and_exports(path):
    onnx = pytest.importorskip("onnx")
    from qir.frontends.onnx.exporter import export_onnx
    from qir.frontends.onnx.importer import load_onnx
    from tests.models.test_light_models import final_softmax_input, official_inputs, onnxruntime_values

    model = onnx.load(str(path))
    feeds = official_inputs(model)
    probe = final_softmax_input(model) or model.graph.output[0].name
    graph = load_onnx(str(path))
    ctx = PassContext(reproducer=False)
    # The light models build their weights with ConstantOfShape: fold them (no size cap) so
    # that BatchNorm sees constant weights.
    for name, options in (("fold-constants", {"max-size": "1000000000", "max-growth": "1e12"}), ("dce", {})):
        make_pass(name, options).run(graph, ctx)
    reference = _probe(graph, feeds, probe)
    before = len(graph.nodes)
    sources = {p for n in graph.walk() for p in n.provenance}
    for name in FUSION_PASSES + ["dce"]:
        make_pass(name).run(graph, ctx)
        verify(graph)
    assert "nn.batch_normalization" not in ops_of(graph)
    assert len(graph.nodes) <= before
    assert_provenance(graph, sources)
    ours = _probe(graph, feeds, probe)
    scale = np.abs(reference).max()
    assert np.abs(ours - reference).max() <= 1e-4 * scale
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-4 * scale)

    exported = export_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    assert not any(n.domain not in ("", "ai.onnx") for n in exported.graph.node)
    assert "BatchNormalization" not in {n.op_type for n in exported.graph.node}
    theirs = onnxruntime_values(exported, feeds, [probe])[probe]
    np.testing.assert_allclose(theirs, reference, rtol=1e-3, atol=1e-4 * scale)
