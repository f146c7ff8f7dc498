"""The random-graph strategies make valid graphs that run, quickly, and cover what passes need."""

from __future__ import annotations

import collections
import time

import numpy as np
from hypothesis import given

from qir.ir.printer import print_graph
from qir.ir.verifier import verify
from tests.passes.helpers import (PROPERTY_SETTINGS, assert_same_outputs, copy_graph, random_feeds,
                                  run_graph)
from tests.passes.strategies import cnn_graphs, elementwise_graphs, graphs, shape_graphs, transformer_graphs


def _check_case(case) -> None:
    g, feeds = case
    verify(g)
    assert g.outputs, "a generated graph has outputs"
    assert set(feeds) == {v.name for v in g.inputs}
    outs = run_graph(g, feeds)
    for v, out in zip(g.outputs, outs):
        assert out.shape == tuple(v.type.shape), f"%{v.name}: ran to {out.shape}, declared {v.type}"
        assert out.dtype == v.type.dtype.numpy
        assert np.all(np.isfinite(out)), f"%{v.name} is not finite"
    for node in g.nodes:
        assert node.provenance == (node.name,)
        for out in node.outputs:  # no zero-sized tensors: they hide bugs instead of finding them
            assert out.type.shape is not None and 0 not in out.type.shape, f"{node}: {out.type}"


@PROPERTY_SETTINGS
@given(elementwise_graphs())
def test_elementwise_graphs_verify_and_run(case):
    _check_case(case)


@PROPERTY_SETTINGS
@given(shape_graphs())
def test_shape_graphs_verify_and_run(case):
    _check_case(case)


@PROPERTY_SETTINGS
@given(cnn_graphs())
def test_cnn_graphs_verify_and_run(case):
    _check_case(case)


@PROPERTY_SETTINGS
@given(transformer_graphs())
def test_transformer_graphs_verify_and_run(case):
    _check_case(case)


@PROPERTY_SETTINGS
@given(graphs())
def test_copies_compute_the_same(case):
    """The deep copy check_pass_preserves makes is exact (text + weights round trip)."""
    copy = copy_graph(case.graph)
    assert print_graph(copy) == print_graph(case.graph)
    assert_same_outputs(case.graph, copy, case.feeds, rtol=0, atol=0)


def test_random_feeds_match_inputs():
    case = None

    @PROPERTY_SETTINGS
    @given(cnn_graphs())
    def grab(c):
        nonlocal case
        case = c

    grab()
    feeds = random_feeds(case.graph)
    assert {k: v.shape for k, v in feeds.items()} == {k: v.shape for k, v in case.feeds.items()}


def test_generation_covers_the_ops():
    """4 x 100 graphs, with the ops the passes rewrite all present."""
    ops = collections.Counter()
    count = 0
    start = time.perf_counter()
    for strategy in (elementwise_graphs(), shape_graphs(), cnn_graphs(), transformer_graphs()):
        @PROPERTY_SETTINGS.__class__(PROPERTY_SETTINGS, max_examples=100, derandomize=True, database=None)
        @given(strategy)
        def collect(case):
            nonlocal count
            count += 1
            ops.update(n.op for n in case.graph.nodes)

        collect()
    print(f"generated {count} graphs in {time.perf_counter() - start:.1f} s")
    wanted = {"nn.conv", "nn.batch_normalization", "nn.relu", "elementwise.clip", "elementwise.add",
              "linalg.matmul", "tensor.reshape", "tensor.transpose", "tensor.identity",
              "nn.dropout", "elementwise.cast", "tensor.concat", "nn.softmax", "reduce.mean",
              "elementwise.erf", "elementwise.sqrt", "tensor.slice", "tensor.squeeze", "tensor.pad",
              "nn.max_pool", "nn.average_pool", "linalg.gemm"}
    missing = wanted - set(ops)
    assert not missing, f"no generated graph had {sorted(missing)}: {ops}"


# -- the helpers catch what they should ------------------------------------------------------------

import pytest  # noqa: E402

from qir.ir.graph import Graph  # noqa: E402
from qir.ir.types import DType, TensorType  # noqa: E402
from qir.passes import Pass  # noqa: E402
from tests.passes.helpers import check_pass_preserves, golden  # noqa: E402


def _relu_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (2, 3)))
    r = g.add_node("nn.relu", [x], name="relu0", output_names=["r"])
    n = g.add_node("elementwise.neg", [r.output], name="neg0", output_names=["y"])
    g.outputs = [n.output]
    return g


class _DropRelu(Pass):
    """A wrong pass: relu(x) → x."""

    name = "test-drop-relu"

    def run(self, graph, ctx):
        for node in list(graph.nodes):
            if node.op == "nn.relu":
                graph.replace_all_uses(node.output, node.inputs[0])
                graph.erase_node(node)
        return True


class _MadeUpProvenance(Pass):
    """A pass that rewrites neg as mul by -1 but cites a node that never existed."""

    name = "test-made-up-provenance"

    def run(self, graph, ctx):
        import numpy as np

        for node in list(graph.nodes):
            if node.op == "elementwise.neg":
                minus = graph.add_constant(np.array(-1, np.float32))
                new = graph.add_node("elementwise.mul", [node.inputs[0], minus], before=node,
                                     provenance=("Neg_17",))
                out_name = node.output.name
                graph.replace_all_uses(node.output, new.output)
                graph.rename(node.output, out_name + "_old")  # frees the output's name
                graph.erase_node(node)
                graph.rename(new.output, out_name)
        return True


def test_check_pass_preserves_catches_a_wrong_pass():
    with pytest.raises(AssertionError, match="output %y"):
        check_pass_preserves(_DropRelu(), _relu_graph(), feeds=None)


def test_check_pass_preserves_catches_made_up_provenance():
    with pytest.raises(AssertionError, match="Neg_17"):
        check_pass_preserves(_MadeUpProvenance(), _relu_graph())
    check_pass_preserves(_MadeUpProvenance(), _relu_graph(), provenance=False)


def test_check_pass_preserves_leaves_the_original_alone():
    g = _relu_graph()
    text = print_graph(g)
    after = check_pass_preserves("dce", g)
    assert print_graph(g) == text and after is not g


def test_golden_writes_then_compares(tmp_path, monkeypatch):
    before = tmp_path / "dead.qir"
    g = _relu_graph()
    g.add_node("nn.sigmoid", [g.inputs[0]], name="dead0")  # nothing uses it
    before.write_text(print_graph(g))
    monkeypatch.setenv("QIR_UPDATE_GOLDEN", "1")
    golden(before, "dce")
    after = tmp_path / "dead.after.qir"
    assert after.exists() and "sigmoid" not in after.read_text()
    monkeypatch.delenv("QIR_UPDATE_GOLDEN")
    golden(before, "dce")
    after.write_text(after.read_text().replace("neg0", "neg1"))
    with pytest.raises(AssertionError, match="differs from dead.after.qir"):
        golden(before, "dce")
    after.unlink()
    with pytest.raises(AssertionError, match="QIR_UPDATE_GOLDEN=1"):
        golden(before, "dce")
