"""Unit tests of the elementwise op family: inference (broadcasting, symbolic dims, dtypes),
kernels against numpy (property tests over random broadcastable shapes), the ONNX edge cases
that numpy does not give directly, and the ONNX converter's upgrade of old opset forms."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

import qir
from qir.errors import QirError
from qir.ir.graph import Graph
from qir.ir.opdef import get_op
from qir.ir.types import DType, TensorType


def _node(op, *types, attrs=None):
    """A node of ``op`` over fresh graph inputs of ``types``; returns its output types."""
    g = Graph("t")
    inputs = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    node = g.add_node(op, inputs, attrs or {})
    return [v.type for v in node.outputs]


def _run(op, *arrays, **attrs):
    return get_op(op).kernel(*arrays, **attrs)


# -- inference -------------------------------------------------------------------------------

def test_broadcast_with_symbolic_dims():
    a = TensorType(DType.FLOAT32, ("N", 1, 3))
    b = TensorType(DType.FLOAT32, (4, 1))
    assert _node("elementwise.add", a, b) == [TensorType(DType.FLOAT32, ("N", 4, 3))]
    # A symbol against an int: the int wins (the symbol must be 1 or equal to it).
    assert _node("elementwise.mul", TensorType(DType.FLOAT32, ("N", 3)),
                 TensorType(DType.FLOAT32, (5, 3)))[0].shape == (5, 3)
    # Unknown rank stays unknown.
    assert _node("elementwise.sub", TensorType(DType.FLOAT32, None), b)[0].shape is None


def test_predicates_give_bool_and_where_broadcasts_three_inputs():
    f = TensorType(DType.INT32, (2, 1))
    assert _node("elementwise.less_or_equal", f, TensorType(DType.INT32, (3,))) == \
        [TensorType(DType.BOOL, (2, 3))]
    out = _node("elementwise.where", TensorType(DType.BOOL, (1, "S")), TensorType(DType.FLOAT16, (4, 1)),
                TensorType(DType.FLOAT16, ()))
    assert out == [TensorType(DType.FLOAT16, (4, "S"))]


def test_variadic_and_cast_inference():
    ts = [TensorType(DType.FLOAT32, s) for s in [(3,), (2, 1), ("B", 1, 1)]]
    assert _node("elementwise.mean", *ts)[0].shape == ("B", 2, 3)
    assert _node("elementwise.cast", ts[0], attrs={"to": DType.FLOAT8E4M3FN}) == \
        [TensorType(DType.FLOAT8E4M3FN, (3,))]
    assert _node("elementwise.cast_like", ts[1], TensorType(DType.INT4, (7,))) == \
        [TensorType(DType.INT4, (2, 1))]
    assert _node("elementwise.pow", TensorType(DType.INT64, (3,)), TensorType(DType.FLOAT32, ()))[0].dtype \
        == DType.INT64
    subs, lengths = _node("elementwise.string_split", TensorType(DType.STRING, ("N",)))
    assert subs.shape[:1] == ("N",) and len(subs.shape) == 2 and lengths == TensorType(DType.INT64, ("N",))


def test_mismatched_dtypes_and_shapes_are_user_errors():
    with pytest.raises(QirError, match="share one dtype"):
        _node("elementwise.add", TensorType(DType.FLOAT32, (2,)), TensorType(DType.INT64, (2,)))
    with pytest.raises(QirError, match="broadcast"):
        _node("elementwise.add", TensorType(DType.FLOAT32, (2,)), TensorType(DType.FLOAT32, (3,)))


# -- kernels against numpy -------------------------------------------------------------------

BINARY = {
    "elementwise.add": np.add, "elementwise.sub": np.subtract, "elementwise.mul": np.multiply,
    "elementwise.max": np.maximum, "elementwise.min": np.minimum,
    "elementwise.less": np.less, "elementwise.greater_or_equal": np.greater_equal,
    "elementwise.equal": np.equal,
}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(BINARY)),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4),
       dtype=st.sampled_from([np.float32, np.int32, np.int8, np.uint16]),
       data=st.data())
def test_binary_ops_match_numpy(name, shapes, dtype, data):
    a = data.draw(hnp.arrays(dtype, shapes.input_shapes[0]))
    b = data.draw(hnp.arrays(dtype, shapes.input_shapes[1]))
    with np.errstate(all="ignore"):
        want = BINARY[name](a, b)
        got = _run(name, a, b)
    assert got.shape == shapes.result_shape
    (out_type,) = _node(name, TensorType(DType.from_numpy(dtype), a.shape), TensorType(DType.from_numpy(dtype), b.shape))
    assert out_type.shape == got.shape and out_type.dtype.numpy == got.dtype
    np.testing.assert_array_equal(got, want.astype(got.dtype))


@settings(max_examples=40, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3), data=st.data())
def test_variadic_sum_and_mean_match_numpy(shapes, data):
    xs = [data.draw(hnp.arrays(np.float64, s, elements=st.floats(-1e6, 1e6))) for s in shapes.input_shapes]
    np.testing.assert_allclose(_run("elementwise.sum", *xs), xs[0] + xs[1] + xs[2])
    np.testing.assert_allclose(_run("elementwise.mean", *xs), (xs[0] + xs[1] + xs[2]) / 3)


def test_integer_div_truncates_and_mod_follows_fmod():
    a = np.array([-7, 7, -7, 7], np.int32)
    b = np.array([2, 2, -2, -2], np.int32)
    np.testing.assert_array_equal(_run("elementwise.div", a, b), [-3, 3, 3, -3])
    np.testing.assert_array_equal(_run("elementwise.mod", a, b, fmod=0), np.mod(a, b))
    np.testing.assert_array_equal(_run("elementwise.mod", a, b, fmod=1), np.fmod(a, b))


def test_bit_shift_out_of_range_shifts_everything_out():
    x = np.array([-8, 4, -1], np.int8)
    np.testing.assert_array_equal(_run("elementwise.bit_shift", x, np.array([8, -1, 3], np.int8), direction="RIGHT"),
                                  [-1, 0, -1])
    np.testing.assert_array_equal(_run("elementwise.bit_shift", x, np.array([8, -1, 1], np.int8), direction="LEFT"),
                                  [0, 0, -2])


def test_round_half_to_even_and_saturating_float8_cast():
    np.testing.assert_array_equal(_run("elementwise.round", np.array([0.5, 1.5, 2.5, -0.5], np.float32)),
                                  [0, 2, 2, -0.0])
    x = np.array([1e6, -np.inf, np.nan, 0.3], np.float32)
    sat = _run("elementwise.cast", x, to=DType.FLOAT8E4M3FN, saturate=1, round_mode="up")
    assert sat.dtype == ml_dtypes.float8_e4m3fn
    assert float(sat[0]) == 448 and float(sat[1]) == -448 and np.isnan(float(sat[2]))
    raw = _run("elementwise.cast", x, to=DType.FLOAT8E4M3FN, saturate=0, round_mode="up")
    assert np.isnan(float(raw[0]))  # e4m3fn has no inf: out of range becomes NaN


def test_strings_round_trip_through_cast():
    x = np.array([0.5, -np.inf, np.nan], np.float32)
    s = _run("elementwise.cast", x, to=DType.STRING, saturate=1, round_mode="up")
    assert s.dtype == object and list(s) == ["0.5", "-INF", "NaN"]
    back = _run("elementwise.cast", np.array(["0.5", "-INF", "NaN", "1e3"], dtype=object),
                to=DType.FLOAT32, saturate=1, round_mode="up")
    np.testing.assert_array_equal(back, np.array([0.5, -np.inf, np.nan, 1000], np.float32))


# -- the ONNX converter: old opset forms ------------------------------------------------------

def _model(nodes, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _only(outputs: dict):
    (value,) = outputs.values()
    return value


def _info(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def test_legacy_add_with_broadcast_axis_is_upgraded():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = np.array([10, 20, 30], np.float32)
    node = helper.make_node("Add", ["a", "b"], ["c"], broadcast=1, axis=1)
    for init in (True, False):  # b as a constant and as a graph input
        inputs = [_info("a", TensorProto.FLOAT, [2, 3, 4])] + ([] if init else [_info("b", TensorProto.FLOAT, [3])])
        inits = [onnx.numpy_helper.from_array(b, "b")] if init else []
        model = _model([node], inputs, [_info("c", TensorProto.FLOAT, [2, 3, 4])], 6, inits)
        feeds = {"a": a} if init else {"a": a, "b": b}
        out = _only(qir.compile(model).run(feeds))
        np.testing.assert_array_equal(out, a + b[:, None])


def test_legacy_clip_cast_and_consumed_inputs_are_upgraded():
    x = np.array([-2.0, 0.25, 3.0], np.float32)
    nodes = [helper.make_node("Clip", ["x"], ["c"], min=-1.0, max=1.0),
             helper.make_node("Abs", ["c"], ["d"], consumed_inputs=[0]),
             helper.make_node("Sum", ["c", "d"], ["s"], consumed_inputs=[0, 0])]
    model = _model(nodes, [_info("x", TensorProto.FLOAT, [3])], [_info("s", TensorProto.FLOAT, [3])], 1)
    np.testing.assert_array_equal(_only(qir.compile(model).run({"x": x})), [0, 0.5, 2])
    cast = _model([helper.make_node("Cast", ["x"], ["y"], to="INT32")],
                  [_info("x", TensorProto.FLOAT, [3])], [_info("y", TensorProto.INT32, [3])], 1)
    np.testing.assert_array_equal(_only(qir.compile(cast).run({"x": x})), [-2, 0, 3])
