"""Graph outputs keep the ONNX model's output names: names that converters make up for their
internal nodes and values (constants, loop bodies, helper nodes) never take them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

import qir
from qir.errors import UnsupportedOpError


def _node_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case builders overflow casts on purpose
        return [case for case in collect_testcases(None) if case.model is not None]


def test_every_onnx_node_test_model_keeps_its_output_names():
    mismatched = []
    for case in _node_cases():
        try:
            graph = qir.load_onnx(case.model)
        except UnsupportedOpError:
            continue  # ops qir does not convert (yet) are the conformance suite's business
        want = [vi.name for vi in case.model.graph.output]
        got = [v.name for v in graph.outputs]
        if got != want:
            mismatched.append(f"{case.name}: {got} != {want}")
    assert not mismatched, "\n".join(mismatched)


def test_internal_constant_names_do_not_take_a_later_output_name():
    # Squeeze-11's axes attribute becomes a constant input named after the node ("s_const"),
    # the very name a later node's output has.
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["x"], ["s"], axes=[0]),
         helper.make_node("Neg", ["s"], ["s_const"])],
        "clash", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("s_const", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    assert [v.name for v in qir.load_onnx(model).outputs] == ["s_const", "s"]
    out = qir.compile(model).run({"x": np.array([[1, 2, 3]], np.float32)})
    assert list(out) == ["s_const", "s"]
    np.testing.assert_array_equal(out["s_const"], [-1, -2, -3])


@pytest.mark.parametrize("opset", [8, 11])
def test_subgraph_names_do_not_take_the_main_graph_output_names(opset):
    # A Loop body whose values are named like the main graph's outputs ("y"): the outputs
    # still get "y" and "n", the body's values a suffix.
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Add", ["y_in", "one"], ["y"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["m", "", "y0"], ["n"], body=body),
         helper.make_node("Neg", ["n"], ["y"])],
        "main",
        [helper.make_tensor_value_info("m", TensorProto.INT64, []),
         helper.make_tensor_value_info("y0", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("n", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    out = qir.compile(model).run({"m": np.array(3, np.int64), "y0": np.array(1, np.float32)})
    assert list(out) == ["y", "n"]
    assert out["n"] == 4 and out["y"] == -4
