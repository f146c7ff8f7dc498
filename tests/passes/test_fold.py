"""fold-constants: golden before/after IR, property tests, and every official ONNX node test.

Property tests take random graphs from tests/passes/strategies.py and turn some of their inputs
into constants (so that there is something to fold), then check with verify-each that the
reference interpreter computes the same outputs before and after. Folding runs the ops' own
kernels on the same values, so results are bit-identical: tolerance 0.

The ONNX node tests (onnx.backend.test.case.node.collect_testcases, built in memory) run with
their inputs fed, and again with their inputs turned into constants (everything folds), through
all of the cleanup passes; outputs must equal those of the untouched graph.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, strategies as st

from qir.errors import QirError
from qir.ir.parser import parse_graph
from qir.ir.verifier import verify
from qir.passes import resolve_pipeline
from qir.passes.fold import fold_constants
from qir.targets.reference import Interpreter
from tests.passes.helpers import (GOLDEN_DIR, PROPERTY_SETTINGS, assert_close, check_pass_preserves,
                                  golden)
from tests.passes.strategies import Case, graphs

GOLDEN = GOLDEN_DIR / "fold"
ALL = "infer-shapes,canonicalize,fold-constants,cse,eliminate-noops,dce"


def test_golden():
    rng = np.random.RandomState(0)
    feeds = {"x": rng.rand(2, 3).astype(np.float32), "y": rng.rand(5, 3, 4).astype(np.float32)}
    g = golden(GOLDEN / "fold.qir", "fold-constants{max-size=1000},dce", feeds=feeds, rtol=0, atol=0)
    ops = [n.op for n in g.nodes]
    assert "tensor.constant_of_shape" in ops  # 100000 elements > max-size: stays a node
    assert "tensor.transpose" not in ops and "tensor.shape" not in ops[:1]


def _parse(text: str):
    g = parse_graph(text)
    verify(g)
    return g


def test_growth_cap_keeps_expand_and_tile():
    g = _parse("""graph @g() -> (%y: f32[64,64], %z: f32[2,4]) {
      %one = const f32[1] [1.0]
      %s = const i64[2] [64, 64]
      %r = const i64[1] [4]
      %y = tensor.expand(%one, %s) : f32[64,64] @e
      %z = tensor.tile(%one, %r) : f32[4] @t
      return %y, %z
    }""".replace("%z: f32[2,4]", "%z: f32[4]"))
    fold_constants(g)
    verify(g)
    assert [n.op for n in g.nodes] == ["tensor.expand"]  # 4096 elements from 1: too much growth
    assert g.outputs[1].name == "z" and g.outputs[1].is_constant
    fold_constants(g, max_growth=10_000)
    assert not g.nodes and [v.name for v in g.outputs] == ["y", "z"]


def test_random_and_failing_nodes_are_not_folded():
    g = _parse("""graph @g() -> (%y: f32[4], %z: f32[2]) {
      %x = const f32[4] [1.0, 2.0, 3.0, 4.0]
      %ratio = const f32[] 0.5
      %train = const bool[] true
      %i = const i64[2] [0, 7]
      %y = nn.dropout(%x, %ratio, %train) : f32[4] @d
      %z = tensor.gather(%x, %i) {axis=0} : f32[2] @bad
      return %y, %z
    }""")
    assert not fold_constants(g)
    assert [n.name for n in g.nodes] == ["d", "bad"]


def test_symbolic_shape_parts_fold():
    g = _parse("""graph @g(%x: f32[N,3,4]) -> (%y: i64[1], %z: i64[3]) {
      %i = const i64[1] [2]
      %s = tensor.shape(%x) : i64[3] @s
      %y = tensor.gather(%s, %i) {axis=0} : i64[1] @d
      %z = tensor.shape(%x) : i64[3] @s2
      return %y, %z
    }""")
    fold_constants(g)
    verify(g)
    assert g.outputs[0].is_constant and g.outputs[0].const.tolist() == [4]
    assert [n.op for n in g.nodes] == ["tensor.shape"]  # N is not known


def test_if_with_constant_condition_is_inlined():
    text = """graph @g(%x: f32[3]) -> (%y: f32[3], %w: f32[3]) {
      %c = const bool[] COND
      %one = const f32[] 1.0
      %y, %w = control.if(%c) {else_branch=graph @e() -> (%e1: f32[3], %x: f32[3]) {
        %e1 = elementwise.sub(%x, %one) : f32[3] @e_sub
        return %e1, %x
      }, then_branch=graph @t() -> (%t1: f32[3], %t2: f32[3]) {
        %k = const f32[] 2.0
        %t1 = elementwise.mul(%x, %k) : f32[3] @t_mul
        %t2 = nn.relu(%t1) : f32[3] @t_relu
        return %t1, %t2
      }} : f32[3], f32[3] @if
      return %y, %w
    }"""
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    for cond in ("true", "false"):
        g = _parse(text.replace("COND", cond))
        expected = Interpreter(g).run({"x": x})
        assert fold_constants(g)
        verify(g)
        ops = [n.op for n in g.nodes]
        assert "control.if" not in ops
        assert [v.name for v in g.outputs] == ["y", "w"]
        assert ops == (["elementwise.mul", "nn.relu"] if cond == "true" else ["elementwise.sub", "tensor.identity"])
        for a, e in zip(Interpreter(g).run({"x": x}), expected):
            np.testing.assert_array_equal(a, e)
    assert not fold_constants(_parse(text.replace("COND", "true")), inline_if=False)


# -- properties --------------------------------------------------------------------------------

@st.composite
def graphs_with_constant_inputs(draw):
    """A random graph in which a random subset of the inputs became constants."""
    case = draw(graphs())
    g, feeds = case.graph, dict(case.feeds)
    keep = draw(st.lists(st.booleans(), min_size=len(g.inputs), max_size=len(g.inputs)))
    for value, kept in zip(list(g.inputs), keep):
        if kept or value in g.outputs:
            continue
        const = g.add_constant(feeds.pop(value.name), name=value.name + "_c")
        g.replace_all_uses(value, const)
        g.inputs.remove(value)
    return Case(g, feeds)


@PROPERTY_SETTINGS
@given(graphs_with_constant_inputs())
def test_fold_preserves_outputs(case):
    after = check_pass_preserves("fold-constants", case.graph, case.feeds, tol=0)
    # nothing foldable is left behind (dead nodes are dce's business)
    returned = {id(v) for v in after.outputs}
    for node in after.nodes:
        used = any(v.uses or id(v) in returned for v in node.outputs)
        if used and all(v is None or v.is_constant for v in node.inputs):
            size = sum(int(np.prod(v.type.shape)) for v in node.outputs)
            assert size > 1024, f"{node.name} ({node.op}) could have been folded"


@PROPERTY_SETTINGS
@given(graphs_with_constant_inputs())
def test_all_cleanup_passes_preserve_outputs(case):
    check_pass_preserves(ALL, case.graph, case.feeds, tol=0)


# -- the official ONNX node tests -------------------------------------------------------------

@functools.cache
def _node_cases():
    from onnx.backend.test.case.node import collect_testcases

    import qir

    cases = []
    for case in collect_testcases(None):
        try:
            graph = qir.load_onnx(case.model)
        except QirError:
            continue  # an op qir does not import
        inputs, _ = case.data_sets[0]
        cases.append((case.name, case.model, dict(zip([v.name for v in graph.inputs], inputs))))
    return cases


def _check_node_case(model, feeds, constant_inputs: bool) -> bool:
    import qir

    graph = qir.load_onnx(model)
    try:
        expected = Interpreter(graph).run(feeds)
    except QirError:
        return False  # the interpreter cannot run it (listed in the conformance expected failures)
    if constant_inputs:
        if not all(isinstance(a, np.ndarray) for a in feeds.values()):
            return False
        for value in list(graph.inputs):
            const = graph.add_constant(feeds[value.name])
            graph.replace_all_uses(value, const)
            graph.inputs.remove(value)
        feeds = {}
    for p in resolve_pipeline(ALL):
        p.run(graph, None)
        verify(graph)
    actual = Interpreter(graph).run(feeds)
    for a, e in zip(actual, expected):
        assert_close(a, e, rtol=0, atol=0)
    return True


@pytest.mark.parametrize("constant_inputs", [False, True], ids=["fed", "constant"])
def test_onnx_node_tests_keep_their_outputs(constant_inputs):
    checked, failures = 0, []
    for name, model, feeds in _node_cases():
        try:
            checked += _check_node_case(model, feeds, constant_inputs)
        except Exception as exc:  # collect every failure, not just the first
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, f"{len(failures)} of the ONNX node tests changed:\n" + "\n".join(failures)
    assert checked > 1500
