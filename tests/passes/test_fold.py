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
from qir.ir.printer import is_splat, print_graph, splat
from qir.passes.fold import fold_constants
from qir.ir.interpreter import Interpreter
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
    # 100000 elements > max-size, but one value broadcast: a splat constant, which costs nothing
    assert "tensor.constant_of_shape" not in ops and is_splat(g.outputs[2].const)
    assert "tensor.transpose" not in ops and "tensor.shape" not in ops[:1]


def _parse(text: str):
    g = parse_graph(text)
    verify(g)
    return g


def test_growth_cap_keeps_expand_and_tile():
    # (the data is not one value: a splat would fold whatever its size, see test_splats_fold)
    data = str([float(i) for i in range(64)])
    g = _parse(f"""graph @g() -> (%y: f32[64,64], %z: f32[256]) {{
      %v = const f32[64] {data}
      %s = const i64[2] [64, 64]
      %r = const i64[1] [4]
      %y = tensor.expand(%v, %s) : f32[64,64] @e
      %z = tensor.tile(%v, %r) : f32[256] @t
      return %y, %z
    }}""")
    fold_constants(g)
    verify(g)
    assert [n.op for n in g.nodes] == ["tensor.expand"]  # 4096 elements from 64: too much growth
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


def test_splats_fold():
    """ConstantOfShape, Expand of one value, view ops and elementwise ops of splats fold into
    splat constants (zero-stride views) whatever the size caps; outputs are unchanged."""
    g = _parse("""graph @g(%x: f32[4096,3]) -> (%y: f32[4096,3], %t: f32[3,4096], %m: bool[6,2048]) {
      %shape = const i64[2] [4096, 3]
      %one = const f32[1] [0.5]
      %s2 = const i64[2] [3, 4096]
      %s3 = const i64[2] [6, 2048]
      %c = tensor.constant_of_shape(%shape) {value=tensor f32[1] [0.25]} : f32[4096,3] @cos
      %e = tensor.expand(%one, %s2) : f32[3,4096] @e
      %k = elementwise.mul(%c, %one) : f32[4096,3] @k
      %y = elementwise.add(%x, %k) : f32[4096,3] @add
      %t = tensor.transpose(%k) {perm=[1, 0]} : f32[3,4096] @tr
      %r = tensor.reshape(%e, %s3) : f32[6,2048] @r
      %m = elementwise.greater(%r, %one) : bool[6,2048] @gt
      return %y, %t, %m
    }""")
    feeds = {"x": np.random.RandomState(0).rand(4096, 3).astype(np.float32)}
    expected = Interpreter(g).run(feeds)
    fold_constants(g, max_size=10, max_growth=1.0)
    verify(g)
    assert [n.op for n in g.nodes] == ["elementwise.add"]
    consts = {v.name: v.const for v in g.constants.values()}
    assert is_splat(consts["k"]) and consts["k"].shape == (4096, 3) and consts["k"][0, 0] == 0.125
    assert is_splat(consts["t"]) and consts["t"].shape == (3, 4096)
    assert is_splat(consts["m"]) and consts["m"].dtype == np.bool_ and not consts["m"][0, 0]
    assert "splat 0.125" in print_graph(g)
    for a, e in zip(Interpreter(g).run(feeds), expected):
        np.testing.assert_array_equal(a, e)


def test_splat_constants_run_and_compile():
    """A broadcast view as a constant: the interpreter, every opt level of qir.compile and a
    matmul (which numpy computes differently for zero strides) give the materialized results."""
    import qir
    from qir.ir.graph import Graph
    from qir.ir.types import DType, TensorType

    def build(w):
        g = Graph("g")
        x = g.add_input("x", TensorType(DType.FLOAT32, (1, 64)))
        c = g.add_constant(w, "w")
        m = g.add_node("linalg.matmul", [x, c]).outputs[0]
        y = g.add_node("elementwise.add", [m, g.add_constant(splat(1.5, np.float32, (1, 32)), "b")])
        g.outputs = [y.outputs[0]]
        return g

    w = splat(np.float32(0.01), np.float32, (64, 32))
    assert not w.flags.writeable
    feeds = {"x": np.random.RandomState(1).rand(1, 64).astype(np.float32)}
    expected = Interpreter(build(np.ascontiguousarray(w))).run(feeds)[0]
    np.testing.assert_array_equal(Interpreter(build(w)).run(feeds)[0], expected)
    for level in (0, 1, 2, 3):
        out = qir.compile(build(w), opt_level=level).run(feeds)
        np.testing.assert_array_equal(next(iter(out.values())), expected)
