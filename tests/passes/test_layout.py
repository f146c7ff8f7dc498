"""convert-layout{layout=NHWC} and cancel-transposes: golden IR and property tests.

Both passes only move data (transposes, transposed constants, remapped axes), so outputs must
be bit-identical (rtol = atol = 0).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given

from qir.errors import QirError
from qir.ir.graph import Graph
from qir.ir.types import DType, TensorType
from qir.passes.layout import LAYOUT_OPS, compose, inverse, to_first, to_last
from tests.passes.helpers import (GOLDEN_DIR, PROPERTY_SETTINGS, check_pass_preserves, copy_graph, golden,
                                  run_pipeline)
from tests.passes.strategies import Case, cnn_graphs, shape_graphs

GOLDEN = GOLDEN_DIR / "layout"
F32 = DType.FLOAT32


def count(graph: Graph, op: str) -> int:
    return sum(1 for n in graph.walk() if n.op == op)


def test_perms():
    assert to_last(4) == [0, 2, 3, 1] and to_first(4) == [0, 3, 1, 2]
    assert compose(to_last(5), to_first(5)) == list(range(5))
    x = np.arange(24).reshape(2, 3, 4)
    p, q = [2, 0, 1], [1, 2, 0]
    assert np.array_equal(x.transpose(p).transpose(q), x.transpose(compose(p, q)))
    assert compose(p, inverse(p)) == [0, 1, 2]


def test_convert_layout_golden():
    g = golden(GOLDEN / "cnn.qir", "convert-layout{layout=NHWC}", rtol=0, atol=0)
    # every conv/pool keeps its two adapters, the conv weights are stored OHWI
    assert count(g, "nn.conv") == 2 and count(g, "nn.max_pool") == 1
    consts = {v.name: v.const.shape for v in g.constants.values()}
    assert consts["w1_ohwi"] == (2, 2, 2, 1)


def test_convert_then_cancel_golden():
    """With no anchors, cancel-transposes folds every adapter pair away: NCHW again."""
    g = golden(GOLDEN / "cnn.qir", "convert-layout,cancel-transposes", GOLDEN / "cnn.cancelled.qir",
               rtol=0, atol=0)
    assert count(g, "tensor.transpose") == 0


def test_cancel_transposes_chain_golden():
    golden(GOLDEN / "chain.qir", "cancel-transposes", rtol=0, atol=0)


def test_convert_layout_is_idempotent_and_honours_native():
    from tests.passes.helpers import _read_graph

    g = _read_graph(GOLDEN / "cnn.qir")
    once = check_pass_preserves("convert-layout", g, rtol=0, atol=0)
    twice = check_pass_preserves("convert-layout,convert-layout", g, rtol=0, atol=0)
    assert len(twice.nodes) == len(once.nodes)
    only_conv = check_pass_preserves("convert-layout{native=nn.conv}", g, rtol=0, atol=0)
    assert count(only_conv, "tensor.transpose") < count(once, "tensor.transpose")


def test_unknown_layout_is_an_error():
    g = Graph("main")
    g.outputs = [g.add_input("x", TensorType(F32, (1, 2, 3, 3)))]
    with pytest.raises(QirError, match="unknown layout"):
        check_pass_preserves("convert-layout{layout=NCHW4c}", g)
    check_pass_preserves("convert-layout{layout=NCHW}", g)  # qir's own layout: no-op


@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_convert_layout_keeps_outputs(case):
    after = check_pass_preserves("convert-layout", case.graph, case.feeds, rtol=0, atol=0)
    # at most: boundary in, adapter in, weight adapter, adapter out, boundary out per layout op
    wrapped = sum(1 for n in after.walk() if n.op in LAYOUT_OPS)
    assert count(after, "tensor.transpose") <= count(case.graph, "tensor.transpose") + 5 * wrapped


def _fanout_concat_case() -> Case:
    """A hypothesis counterexample: %v0 (NHWC after convert-layout) is read by two BNs and a
    concat. cancel-transposes used to fold the BNs' adapters away without revisiting %v0's
    transpose, which (now read by the concat alone) could then have been pushed through the
    concat and cancelled: 7 nodes were left where the input had 6."""
    rng = np.random.RandomState(0)
    g = Graph("main")
    x = g.add_input("x0", TensorType(F32, (2, 1, 3, 3)))
    n = iter(range(100))

    def node(op, inputs, attrs):
        i = next(n)
        return g.add_node(op, inputs, attrs, name=f"n{i}", provenance=(f"n{i}",), output_names=[f"v{i}"]).output

    def bn(v):
        params = [rng.uniform(0.5, 1.5, 1), rng.uniform(-0.5, 0.5, 1), rng.uniform(-0.5, 0.5, 1),
                  rng.uniform(0.5, 2.0, 1)]
        consts = [g.add_constant(p.astype(np.float32), f"c{len(g.constants)}") for p in params]
        return node("nn.batch_normalization", [v, *consts], {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0})

    v0 = bn(x)
    v1 = bn(v0)
    out0 = bn(v0)
    v3 = node("tensor.transpose", [v1], {"perm": (0, 1, 2, 3)})
    v4 = node("tensor.transpose", [v3], {"perm": (0, 1, 2, 3)})
    out1 = node("tensor.concat", [v0, v4], {"axis": 1})
    g.rename(out0, "out0")
    g.rename(out1, "out1")
    g.outputs = [out0, out1]
    return Case(g, {"x0": rng.uniform(-2, 2, (2, 1, 3, 3)).astype(np.float32)})


@PROPERTY_SETTINGS
@given(cnn_graphs())
@example(_fanout_concat_case())
def test_convert_then_cancel_restores_node_count(case):
    after = check_pass_preserves("convert-layout,cancel-transposes", case.graph, case.feeds, rtol=0, atol=0)
    assert len(list(after.walk())) <= len(list(case.graph.walk()))
    # cancel-transposes reaches its fixed point: running it again finds nothing left to do
    again = copy_graph(after)
    run_pipeline("cancel-transposes", again)
    assert len(list(again.walk())) == len(list(after.walk()))


def _transposed_softmax_case() -> Case:
    """softmax over a transposed value: cancel-transposes moves the transpose below it and
    remaps the axis, so the sum runs over a contiguous lane instead of a strided one. numpy sums
    those in different orders, which changed the last bit until the softmax kernels summed every
    lane alike (qir/ir/ops/nn.py ``_sum_along``)."""
    g = Graph("main")
    x = g.add_input("x0", TensorType(F32, (3, 16)))
    t = g.add_node("tensor.transpose", [x], {"perm": (1, 0)}, name="n0", provenance=("n0",)).output
    y = g.add_node("nn.softmax", [t], {"axis": 0}, name="n1", provenance=("n1",)).output
    t2 = g.add_node("tensor.transpose", [x], {"perm": (1, 0)}, name="n2", provenance=("n2",)).output
    z = g.add_node("nn.log_softmax", [t2], {"axis": -2}, name="n3", provenance=("n3",)).output
    g.rename(y, "out0")
    g.rename(z, "out1")
    g.outputs = [y, z]
    return Case(g, {"x0": np.random.RandomState(1).uniform(-2, 2, (3, 16)).astype(np.float32)})


@PROPERTY_SETTINGS
@given(shape_graphs())
@example(_transposed_softmax_case())
def test_cancel_transposes_keeps_outputs(case):
    after = check_pass_preserves("cancel-transposes", case.graph, case.feeds, rtol=0, atol=0)
    assert count(after, "tensor.transpose") <= count(case.graph, "tensor.transpose")


# -- real models ------------------------------------------------------------------------------

def _model_cases():
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tests" / "models"))
    from test_light_models import MODELS  # noqa: E402

    return [(m["name"], str(m["path"])) for m in MODELS] + [("digits", str(root / "examples/digits/digits.onnx"))]


@pytest.mark.slow
@pytest.mark.parametrize("name, path", _model_cases(), ids=[c[0] for c in _model_cases()])
def test_models_keep_outputs(name, path):
    """convert-layout (and recognition, a no-op on CNNs) keep each light model's and digits'
    outputs bit for bit and take well under a second; cancel-transposes then restores the
    original node count."""

    import onnx

    import qir
    from tests.models.test_light_models import official_inputs
    from tests.passes.helpers import assert_close, copy_graph, run_graph, run_pipeline

    g = qir.load_onnx(path)
    if name == "digits":
        feeds = {"input": np.random.RandomState(0).rand(2, 1, 8, 8).astype(np.float32)}
    else:
        feeds = official_inputs(onnx.load(path))
    want = run_graph(g, feeds)
    after = copy_graph(g)
    run_pipeline("recognize-layernorm,recognize-gelu,recognize-attention,convert-layout", after)
    assert count(after, "tensor.transpose") > count(g, "tensor.transpose")
    assert [v.name for v in after.outputs] == [v.name for v in g.outputs]
    for got, ref in zip(run_graph(after, feeds), want):
        assert_close(got, ref, rtol=0, atol=0)
    run_pipeline("cancel-transposes", after)
    assert len(after.nodes) <= len(g.nodes)
    for got, ref in zip(run_graph(after, feeds), want):
        assert_close(got, ref, rtol=0, atol=0)
