"""convert-layout{layout=NHWC} and cancel-transposes: golden IR and property tests.

Both passes only move data (transposes, transposed constants, remapped axes), so outputs must
be bit-identical (rtol = atol = 0).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from qir.errors import QirError
from qir.ir.graph import Graph
from qir.ir.types import DType, TensorType
from qir.passes.layout import LAYOUT_OPS, compose, inverse, to_first, to_last
from tests.passes.helpers import GOLDEN_DIR, PROPERTY_SETTINGS, check_pass_preserves, golden
from tests.passes.strategies import cnn_graphs, shape_graphs

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


@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_convert_then_cancel_restores_node_count(case):
    after = check_pass_preserves("convert-layout,cancel-transposes", case.graph, case.feeds, rtol=0, atol=0)
    assert len(list(after.walk())) <= len(list(case.graph.walk()))


@PROPERTY_SETTINGS
@given(shape_graphs())
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
    import time

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
    t0 = time.perf_counter()
    run_pipeline("recognize-layernorm,recognize-gelu,recognize-attention,convert-layout", after)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, f"{name}: passes took {elapsed:.1f} s"
    assert count(after, "tensor.transpose") > count(g, "tensor.transpose")
    assert [v.name for v in after.outputs] == [v.name for v in g.outputs]
    for got, ref in zip(run_graph(after, feeds), want):
        assert_close(got, ref, rtol=0, atol=0)
    run_pipeline("cancel-transposes", after)
    assert len(after.nodes) <= len(g.nodes)
    for got, ref in zip(run_graph(after, feeds), want):
        assert_close(got, ref, rtol=0, atol=0)
