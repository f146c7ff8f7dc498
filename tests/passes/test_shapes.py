"""infer-shapes: golden before/after IR, conflicts, and properties.

Properties: on random graphs from tests/passes/strategies.py whose node output types were
forgotten (set to unknown rank), infer-shapes recovers types that agree with every array the
reference interpreter computes (dtype, rank and each int dim), and outputs stay the same
(the pass changes no computation: tolerance 0).
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from hypothesis import given

from qir.errors import ShapeInferenceError
from qir.ir.parser import parse_graph
from qir.ir.types import TensorType
from qir.ir.verifier import verify
from qir.passes.shapes import infer_shapes, merge_types
from qir.ir.interpreter import Interpreter
from tests.passes.helpers import GOLDEN_DIR, PROPERTY_SETTINGS, check_pass_preserves, golden
from tests.passes.strategies import graphs, shape_graphs

GOLDEN = GOLDEN_DIR / "shapes"


def test_golden_symbolic():
    rng = np.random.RandomState(0)
    feeds = {"x": rng.rand(5, 3, 4).astype(np.float32), "z": rng.rand(5, 7).astype(np.float32),
             "c": np.array(True)}
    g = golden(GOLDEN / "symbolic.qir", "infer-shapes", feeds=feeds, rtol=0, atol=0)
    types = {v.name: str(v.type) for v in g.outputs}
    assert types == {"out0": "f32[N,12]", "out1": "f32[N,3,4]", "out2": "f32[N,?]", "out3": "f32[?]"}
    assert str(g.find_node("fill").output.type) == "f32[3,4]"


def test_conflict_names_the_node():
    g = parse_graph("""graph @g(%x: f32[2,3]) -> (%y: f32[2,5]) {
      %y = nn.relu(%x) : f32[2,5] @bad_relu
      return %y
    }""")
    with pytest.raises(ShapeInferenceError, match="bad_relu"):
        infer_shapes(g)


def test_merge_types_keeps_the_more_specific():
    g = parse_graph("""graph @g(%x: f32[N,?,4], %y: f32[?,3,?]) -> (%x: f32[N,?,4]) { return %x }""")
    x, y = (v.type for v in g.inputs)
    assert str(merge_types(x, y)) == "f32[N,3,4]"
    assert str(merge_types(y, x)) == "f32[N,3,4]"
    assert str(merge_types(attrs.evolve(x, shape=None), y)) == "f32[?,3,?]"
    with pytest.raises(ValueError):
        merge_types(x, attrs.evolve(y, shape=(1, 2, 5)))


def test_second_run_changes_nothing():
    g = parse_graph((GOLDEN / "symbolic.qir").read_text())
    assert infer_shapes(g)
    assert not infer_shapes(g)


def _forget_types(graph):
    for node in graph.walk():
        for v in node.outputs:
            if isinstance(v.type, TensorType):
                v.type = attrs.evolve(v.type, shape=None)


def _check_types_match_runtime(graph, feeds):
    seen = {}
    Interpreter(graph, hook=lambda v, a: seen.__setitem__(id(v), (v, a))).run(feeds)
    for v, a in seen.values():
        t = v.type
        if not isinstance(t, TensorType) or not isinstance(a, np.ndarray):
            continue
        assert t.shape is not None, f"%{v.name}: shape not recovered"
        assert len(t.shape) == a.ndim, f"%{v.name}: {t} vs {a.shape}"
        for d, n in zip(t.shape, a.shape):
            assert not isinstance(d, int) or d == n, f"%{v.name}: {t} vs {a.shape}"


@PROPERTY_SETTINGS
@given(shape_graphs())
def test_infer_shapes_recovers_forgotten_types(case):
    g = case.graph
    _forget_types(g)
    verify(g)
    infer_shapes(g)
    verify(g)
    _check_types_match_runtime(g, case.feeds)


@PROPERTY_SETTINGS
@given(graphs())
def test_infer_shapes_preserves_outputs(case):
    after = check_pass_preserves("infer-shapes", case.graph, case.feeds, tol=0)
    _check_types_match_runtime(after, case.feeds)
