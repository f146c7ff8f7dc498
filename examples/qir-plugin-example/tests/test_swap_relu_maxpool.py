"""Tests of swap-relu-maxpool: golden before/after text, and a property test on random graphs.

Run: .venv/bin/pytest examples/qir-plugin-example/tests   (the package need not be installed:
importing it registers the pass).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import qir_plugin_example  # noqa: F401  (registers the pass)
from qir.ir.graph import Graph
from qir.ir.parser import parse_graph
from qir.ir.printer import print_graph
from qir.ir.types import DType, TensorType
from qir.passes import PassContext, run
from qir.ir.interpreter import Interpreter

BEFORE = """\
graph @g(%x: f32[1,2,4,4]) -> (%y: f32[1,2,2,2], %z: f32[1,2,4,4]) {
  %r = nn.relu(%x) : f32[1,2,4,4] @relu
  %y = nn.max_pool(%r) {kernel_shape=[2,2], strides=[2,2]} : f32[1,2,2,2] @pool
  %r2 = nn.relu(%x) : f32[1,2,4,4] @relu2
  %p2 = nn.max_pool(%r2) {kernel_shape=[2,2], strides=[2,2]} : f32[1,2,2,2] @pool2
  %z = nn.sigmoid(%r2) : f32[1,2,4,4] @other_user
  return %y, %z
}
"""

# The first pair is swapped (the output keeps its name %y; provenance follows the nodes);
# the second is not: its relu has another user.
AFTER = """\
graph @g(%x: f32[1,2,4,4]) -> (%y: f32[1,2,2,2], %z: f32[1,2,4,4]) {
  %max_pool_0 = nn.max_pool(%x) {kernel_shape=[2,2], strides=[2,2]} : f32[1,2,2,2] @max_pool from ["pool"]
  %y = nn.relu(%max_pool_0) : f32[1,2,2,2] @relu_1 from ["relu"]
  %r2 = nn.relu(%x) : f32[1,2,4,4] @relu2
  %p2 = nn.max_pool(%r2) {kernel_shape=[2,2], strides=[2,2]} : f32[1,2,2,2] @pool2
  %z = nn.sigmoid(%r2) : f32[1,2,4,4] @other_user
  return %y, %z
}
"""


def test_golden():
    graph = parse_graph(BEFORE)
    assert run(graph, "swap-relu-maxpool", ctx=PassContext(verify_each=True)) is graph
    assert print_graph(graph) == AFTER


def test_max_rewrites_option_limits_the_rewrites():
    graph = parse_graph(BEFORE.replace("%z = nn.sigmoid(%r2)", "%z = nn.sigmoid(%x)"))
    run(graph, "swap-relu-maxpool{max-rewrites=1}")
    assert [n.op for n in graph.nodes][:2] == ["nn.max_pool", "nn.relu"]
    assert [n.op for n in graph.nodes][2:4] == ["nn.relu", "nn.max_pool"]  # the second is left


@settings(max_examples=50, deadline=None)
@given(channels=st.integers(1, 3), size=st.integers(3, 9), kernel=st.integers(1, 3),
       stride=st.integers(1, 3), pad=st.integers(0, 1), seed=st.integers(0, 2**16))
def test_same_outputs_on_random_pools(channels, size, kernel, stride, pad, seed):
    """Exact equality (tolerance 0): relu and max commute, and neither rounds."""
    pad = min(pad, kernel - 1)
    graph = Graph("g")
    x = graph.add_input("x", TensorType(DType.FLOAT32, (2, channels, size, size)))
    relu = graph.add_node("nn.relu", [x], name="relu")
    pool = graph.add_node("nn.max_pool", [relu.output], {
        "kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4},
        name="pool", num_outputs=1)
    graph.outputs = [pool.output]
    feeds = {"x": np.random.default_rng(seed).standard_normal((2, channels, size, size), np.float32)}
    expected = Interpreter(graph).run(feeds)

    run(graph, "swap-relu-maxpool", ctx=PassContext(verify_each=True))
    assert [n.op for n in graph.nodes] == ["nn.max_pool", "nn.relu"]
    np.testing.assert_array_equal(Interpreter(graph).run(feeds)[0], expected[0])
