"""Rewrite patterns and the greedy driver (qir/passes/pattern.py).

Unit tests of matching (op types, attributes, constants, single use, commutative inputs, names
bound twice, optional inputs), of the explanations of failed matches, of the rewrite bookkeeping
(provenance, graph output names, erasing dead nodes and constants, rolling back a declined
rewrite), of subgraph recursion and of the worklist's speed; and a hypothesis property test:
random graphs (tests/passes/strategies.py) compute the same outputs after a set of exact
algebraic patterns (tolerance: exact, rtol = atol = 0).
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given

from qir.errors import QirError
from qir.ir.graph import Graph
from qir.ir.parser import parse_graph
from qir.ir.types import DType, TensorType
from qir.ir.verifier import verify
from qir.passes.pattern import Const, Op, Pattern, Var, apply_patterns
from tests.passes.helpers import PROPERTY_SETTINGS, assert_same_outputs, copy_graph, random_feeds
from tests.passes.strategies import elementwise_graphs, graphs

F32 = DType.FLOAT32

#: relu(relu(x)) → relu(x), keeping the inner relu (rebuilt so provenance merges).
RELU_RELU = Pattern("relu-relu", Op("nn.relu", Op("nn.relu", Var("x"), single_use=True, name="inner"), name="outer"),
                    lambda m, rw: rw.op("nn.relu", [m["x"]]))
#: neg(neg(x)) → x: the replacement is an existing value.
NEG_NEG = Pattern("neg-neg", Op("elementwise.neg", Op("elementwise.neg", Var("x"))), lambda m, rw: m["x"])


#: x · 1 → x for a scalar one (exact, -0.0 and NaN included) unless the product broadcasts.
MUL_ONE = Pattern("mul-one", Op("elementwise.mul", Var("x"), Const("one", where=lambda c: c.ndim == 0 and c == 1),
                                  commutative=True),
                   lambda m, rw: m["x"] if m.root.output.type == m["x"].type else rw.fail("the product broadcasts"))


def chain_graph(n: int = 3, *, output_inner: bool = False) -> Graph:
    g = Graph("chain")
    v = g.add_input("x", TensorType(F32, (4,)))
    inner = None
    for i in range(n):
        v = g.add_node("nn.relu", [v], name=f"r{i}").output
        inner = inner or v
    g.rename(v, "y")
    g.outputs = [v] + ([inner] if output_inner else [])
    return g


# -- matching ---------------------------------------------------------------------------------

def test_relu_chain_collapses_with_merged_provenance_and_output_name():
    g = chain_graph(4)
    result = apply_patterns(g, [RELU_RELU])
    verify(g)
    assert result and result.converged and result.rewrites["relu-relu"] == 3
    (node,) = g.nodes
    assert node.op == "nn.relu" and node.output.name == "y"
    assert set(node.provenance) == {"r0", "r1", "r2", "r3"}


def test_single_use_blocks_a_value_read_twice_or_returned():
    g = chain_graph(2, output_inner=True)
    inner = g.nodes[0].output.name
    assert RELU_RELU.explain(g.nodes[1]) == f"node r1 (nn.relu) input 0: %{inner} is a graph output (single_use)"
    assert not apply_patterns(g, [RELU_RELU])
    g = chain_graph(2)
    g.add_node("elementwise.neg", [g.nodes[0].output], name="other")
    assert "used 2 times (single_use)" in RELU_RELU.explain(g.nodes[1])


def test_explain_names_the_first_failed_condition():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (2, 3)))
    w = g.add_input("w", TensorType(F32, (3, 3)))
    mm = g.add_node("linalg.matmul", [x, w], name="mm")
    p = Pattern("p", Op("nn.relu", Op("linalg.matmul", Var("a"), Const("w"))), lambda m, rw: None)
    relu = g.add_node("nn.relu", [mm.output], name="relu")
    assert p.explain(relu) == "node relu (nn.relu) input 0: node mm (linalg.matmul) input 1: %w is not a constant ($w)"
    assert p.explain(mm) == "node mm (linalg.matmul) is not nn.relu"
    attr = Pattern("a", Op("nn.leaky_relu", Var("x"), attrs={"alpha": lambda a: a > 0.5}), lambda m, rw: None)
    lr = g.add_node("nn.leaky_relu", [x], name="lr")
    assert attr.explain(lr) == "node lr (nn.leaky_relu): attribute alpha=0.01 fails its condition"
    cond = Pattern("c", Op("nn.relu", Var("x")), lambda m, rw: None, where=[("x is 1-D", lambda m: False)])
    assert cond.explain(relu) == "condition failed: x is 1-D"


def test_commutative_and_names_bound_twice():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (3,)))
    c = g.add_constant(np.float32(1))
    mul = g.add_node("elementwise.mul", [c, x], name="mul")
    square = g.add_node("elementwise.mul", [x, x], name="sq")
    assert MUL_ONE.match(mul) is not None  # the constant is input 0: tried swapped
    same = Pattern("sq", Op("elementwise.mul", Var("a"), Var("a")), lambda m, rw: None)
    assert same.match(square) is not None
    assert same.explain(mul) == "node mul (elementwise.mul) input 1: $a would bind two different values"


def test_optional_inputs_bind_none():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (1, 1, 3, 3)))
    w = g.add_constant(np.ones((1, 1, 1, 1), np.float32))
    conv = g.add_node("nn.conv", [x, w], name="conv")
    p = Pattern("p", Op("nn.conv", Var("x"), Const("w"), Var("b", optional=True)), lambda m, rw: None)
    m = p.match(conv)
    assert m is not None and m["b"] is None and m.const("w") is w.const
    strict = Pattern("p", Op("nn.conv", Var("x"), Const("w"), Var("b")), lambda m, rw: None)
    assert "input is missing" in strict.explain(conv)


def test_existing_value_replacing_a_graph_output_goes_through_an_identity():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (3,)))
    a = g.add_node("elementwise.neg", [x], name="a")
    b = g.add_node("elementwise.neg", [a.output], name="b", output_names=["y"])
    g.outputs = [b.output]
    assert apply_patterns(g, [NEG_NEG])
    verify(g)
    assert [n.op for n in g.nodes] == ["tensor.identity"] and g.outputs[0].name == "y"
    assert set(g.nodes[0].provenance) == {"a", "b"}


def test_declined_rewrite_rolls_back_and_traces_why():
    def build(m, rw):
        rw.op("nn.sigmoid", [m["x"]])  # made, then declined: must vanish
        return rw.fail("not today")

    p = Pattern("decline", Op("nn.relu", Var("x")), build)
    g = chain_graph(1)
    lines = []
    assert not apply_patterns(g, [p], trace=lines.append)
    verify(g)
    assert [n.op for n in g.nodes] == ["nn.relu"]
    assert lines == ["decline @ r0: declined: not today"]


def test_dead_matched_constants_are_erased():
    g = Graph("t")
    x = g.add_input("x", TensorType(F32, (3,)))
    c = g.add_constant(np.float32(1), "one")
    m = g.add_node("elementwise.mul", [x, c], name="m")
    r = g.add_node("nn.relu", [m.output], name="r")
    g.outputs = [r.output]
    assert apply_patterns(g, [MUL_ONE])
    assert not g.constants and [n.op for n in g.nodes] == ["nn.relu"]


def test_builder_giving_the_wrong_number_of_values_is_an_error():
    p = Pattern("bad", Op("nn.relu", Var("x")), lambda m, rw: [m["x"], m["x"]])
    with pytest.raises(QirError, match="gave 2 values for 1 outputs"):
        apply_patterns(chain_graph(1), [p])


def test_ping_pong_patterns_stop_after_max_iterations():
    to_sig = Pattern("a", Op("nn.relu", Var("x")), lambda m, rw: rw.op("nn.sigmoid", [m["x"]]))
    to_relu = Pattern("b", Op("nn.sigmoid", Var("x")), lambda m, rw: rw.op("nn.relu", [m["x"]]))
    g = chain_graph(1)
    result = apply_patterns(g, [to_sig, to_relu], max_iterations=5)
    verify(g)
    assert not result.converged and result.rounds == 5 and result.count == 5


def test_patterns_apply_inside_subgraphs():
    g = parse_graph("""graph @m(%c: bool[], %x: f32[3]) -> (%y: f32[3]) {
  %y = control.if(%c) {then_branch=graph @then() -> (%t: f32[3]) {
    %a = nn.relu(%x) : f32[3] @ra
    %t = nn.relu(%a) : f32[3] @rb
    return %t
  }, else_branch=graph @else() -> (%x: f32[3]) {
    return %x
  }} : f32[3] @if
  return %y
}""")
    assert apply_patterns(g, [RELU_RELU]).count == 1
    verify(g)
    then = g.nodes[0].attrs["then_branch"]
    assert [n.op for n in then.nodes] == ["nn.relu"] and then.outputs[0].name == "t"


def test_worklist_is_linear_on_long_chains():
    """The work (pattern attempts, counted through ``trace``) grows linearly with the chain,
    not quadratically: a wall-clock bound would be noise on a shared machine."""
    attempts = {}
    for n in (1000, 3000):
        g = chain_graph(n)
        lines: list[str] = []
        result = apply_patterns(g, [RELU_RELU, NEG_NEG], trace=lines.append)
        verify(g)
        assert len(g.nodes) == 1 and result.count == n - 1
        attempts[n] = len(lines)
    assert attempts[3000] <= 3.3 * attempts[1000], attempts


def test_root_must_be_an_op_pattern():
    with pytest.raises(QirError):
        Pattern("bad", Var("x"), lambda m, rw: None)  # type: ignore[arg-type]


def test_the_module_docstring_example_runs():
    import qir.passes.pattern as module
    from qir.passes import PassContext
    from qir.passes.registry import _PASSES

    doc = module.__doc__
    code = doc[doc.index("    import attrs"):doc.index("Why did a pattern not fire?")]
    namespace: dict = {}
    exec(compile("\n".join(line[4:] for line in code.splitlines()), "<pattern docstring>", "exec"), namespace)
    try:
        g = Graph("t")
        x = g.add_input("x", TensorType(F32, (1, 2, 3, 3)))
        w = g.add_constant(np.ones((2, 2, 1, 1), np.float32))
        conv = g.add_node("nn.conv", [x, w], name="conv")
        relu = g.add_node("nn.relu", [conv.output], name="relu", output_names=["y"])
        g.outputs = [relu.output]
        assert namespace["FuseConvRelu"]().run(g, PassContext())
        verify(g)
        (node,) = g.nodes
        assert node.op == "fused.conv" and node.provenance == ("conv", "relu") and node.output.name == "y"
    finally:
        _PASSES.pop("my-conv-relu", None)


# -- property test -------------------------------------------------------------------------------

EXACT = [RELU_RELU, NEG_NEG, MUL_ONE]


@PROPERTY_SETTINGS
@given(graphs())
def test_exact_patterns_keep_outputs(case):
    before = copy_graph(case.graph)
    after = copy_graph(case.graph)
    apply_patterns(after, EXACT)
    verify(after)
    assert_same_outputs(before, after, case.feeds, rtol=0, atol=0)


@PROPERTY_SETTINGS
@given(elementwise_graphs())
def test_relu_chains_in_random_graphs_collapse(case):
    g = copy_graph(case.graph)
    apply_patterns(g, [RELU_RELU])
    verify(g)
    for node in g.nodes:
        if node.op == "nn.relu":
            assert RELU_RELU.match(node) is None, "the driver stopped before the fixpoint"
    assert_same_outputs(case.graph, g, case.feeds or random_feeds(case.graph), rtol=0, atol=0)
