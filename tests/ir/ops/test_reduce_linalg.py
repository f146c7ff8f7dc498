"""Unit tests of the reduce and linalg op families: shape inference (keepdims, symbolic dims,
matmul broadcasting, einsum), kernels on ONNX's edge cases (empty-set reductions, TopK ties,
exclusive/reverse cumulation, zero points, signal ops), property tests against numpy on random
shapes, and the ONNX converters' upgrade of old opset forms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from qir.errors import QirError
from qir.frontends.onnx import load_onnx
from qir.ir.graph import Graph
from qir.ir.opdef import get_op
from qir.ir.ops.linalg import einsum_shape, matmul_shape
from qir.ir.types import DType, TensorType
from qir.ir.interpreter import Interpreter

F32 = DType.FLOAT32


def _types(op, *inputs, attrs=None):
    """Output types of a node of ``op``; inputs are TensorTypes (graph inputs) or arrays (constants)."""
    g = Graph("t")
    values = [None if x is None else g.add_constant(x) if isinstance(x, np.ndarray)
              else g.add_input(f"x{i}", x) for i, x in enumerate(inputs)]
    return [v.type for v in g.add_node(op, values, attrs or {}).outputs]


def _shape(op, *inputs, attrs=None):
    return _types(op, *inputs, attrs=attrs)[0].shape


def _run(op, *arrays, **attrs):
    """The op's kernel with the schema's defaults filled in."""
    opdef = get_op(op)
    defaults = {k: a.default for k, a in opdef.attrs.items() if not a.required}
    return opdef.kernel(*arrays, **{**defaults, **attrs})


def _axes(*values):
    return np.array(values, dtype=np.int64)


# -- reduce inference ---------------------------------------------------------------------------

def test_reduce_shape_keepdims_and_symbolic_dims():
    x = TensorType(F32, ("N", 3, "S", 5))
    assert _shape("reduce.sum", x, _axes(1, -1)) == ("N", 1, "S", 1)
    assert _shape("reduce.mean", x, _axes(1, -1), attrs={"keepdims": 0}) == ("N", "S")
    # A symbolic dim reduced away becomes 1 (keepdims) or disappears.
    assert _shape("reduce.max", x, _axes(0, 2)) == (1, 3, 1, 5)
    assert _shape("reduce.l2", x, _axes(0, 2), attrs={"keepdims": 0}) == (3, 5)


def test_reduce_shape_without_axes():
    x = TensorType(DType.INT32, (2, "B", 4))
    assert _types("reduce.prod", x) == [TensorType(DType.INT32, (1, 1, 1))]
    assert _shape("reduce.sum", x, attrs={"keepdims": 0}) == ()
    assert _shape("reduce.sum", x, np.zeros(0, np.int64), attrs={"keepdims": 0}) == ()
    # noop_with_empty_axes: empty axes reduce nothing.
    assert _shape("reduce.sum_square", x, np.zeros(0, np.int64), attrs={"noop_with_empty_axes": 1}) == (2, "B", 4)


def test_reduce_shape_unknown_when_axes_or_rank_are():
    axes = TensorType(DType.INT64, (1,))
    assert _shape("reduce.sum", TensorType(F32, (2, 3)), axes) is None
    assert _shape("reduce.min", TensorType(F32, None), _axes(0)) is None


def test_reduce_bad_axis_names_the_node():
    with pytest.raises(QirError, match="out of range"):
        _types("reduce.sum", TensorType(F32, (2, 3)), _axes(2))


def test_arg_and_top_k_inference():
    x = TensorType(DType.FLOAT16, ("N", 7, 3))
    assert _types("reduce.argmax", x, attrs={"axis": 1}) == [TensorType(DType.INT64, ("N", 1, 3))]
    assert _shape("reduce.argmin", x, attrs={"axis": -1, "keepdims": 0}) == ("N", 7)
    values, indices = _types("reduce.top_k", x, _axes(4), attrs={"axis": 1})
    assert values == TensorType(DType.FLOAT16, ("N", 4, 3))
    assert indices == TensorType(DType.INT64, ("N", 4, 3))
    assert _types("reduce.top_k", x, TensorType(DType.INT64, (1,)))[0].shape is None


# -- reduce kernels -----------------------------------------------------------------------------

@pytest.mark.parametrize("op, identity", [
    ("reduce.sum", 0.0), ("reduce.prod", 1.0), ("reduce.max", -np.inf), ("reduce.min", np.inf),
    ("reduce.l1", 0.0), ("reduce.l2", 0.0), ("reduce.sum_square", 0.0),
    ("reduce.log_sum", -np.inf), ("reduce.log_sum_exp", -np.inf),
])
def test_empty_set_reductions_give_the_identity(op, identity):
    x = np.zeros((2, 0, 4), dtype=np.float32)
    out = _run(op, x, _axes(1))
    assert out.shape == (2, 1, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.full((2, 1, 4), identity, dtype=np.float32))


def test_empty_set_max_of_ints_and_bools():
    assert _run("reduce.max", np.zeros((0, 3), np.int32), _axes(0))[0, 0] == np.iinfo(np.int32).min
    assert _run("reduce.min", np.zeros((0, 3), np.uint8), _axes(0))[0, 0] == 255
    assert not _run("reduce.max", np.zeros((0, 3), bool), _axes(0)).any()
    assert _run("reduce.min", np.zeros((0, 3), bool), _axes(0)).all()


def test_noop_with_empty_axes_still_applies_the_elementwise_part():
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    np.testing.assert_array_equal(_run("reduce.sum_square", x, noop_with_empty_axes=1), x * x)
    np.testing.assert_array_equal(_run("reduce.l1", x, np.zeros(0, np.int64), noop_with_empty_axes=1), abs(x))
    assert _run("reduce.sum", x).shape == (1, 1)


def test_scalar_reductions():
    x = np.array(-3.0, np.float32)
    assert _run("reduce.l1", x) == 3.0 and _run("reduce.l1", x).shape == ()
    assert _run("reduce.sum", x, _axes(0), keepdims=0) == -3.0
    assert _shape("reduce.max", TensorType(F32, ()), _axes(0)) == ()


def test_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -np.inf]], np.float64)
    out = _run("reduce.log_sum_exp", x, _axes(1), keepdims=0)
    np.testing.assert_allclose(out, [1000.0 + np.log(2.0), -1000.0])


def test_reductions_keep_low_precision_dtypes():
    x = np.full((300,), 0.1, np.float16)
    out = _run("reduce.sum", x)
    assert out.dtype == np.float16 and abs(float(out[0]) - 30.0) < 0.05  # float32 accumulation


def test_argmax_select_last_index():
    x = np.array([[2, 2, 1], [3, 3, 3]], np.int32)
    np.testing.assert_array_equal(_run("reduce.argmax", x, axis=1, keepdims=0), [0, 0])
    np.testing.assert_array_equal(_run("reduce.argmax", x, axis=1, keepdims=0, select_last_index=1), [1, 2])
    np.testing.assert_array_equal(_run("reduce.argmin", x, axis=0, select_last_index=1), [[0, 0, 0]])


def test_top_k_ties_keep_the_lower_index_first():
    x = np.array([[3, 1, 3, 2, 1]], np.uint64)
    values, indices = _run("reduce.top_k", x, _axes(3))
    np.testing.assert_array_equal(values, [[3, 3, 2]])
    np.testing.assert_array_equal(indices, [[0, 2, 3]])
    values, indices = _run("reduce.top_k", x, _axes(3), largest=0)
    np.testing.assert_array_equal(values, [[1, 1, 2]])
    np.testing.assert_array_equal(indices, [[1, 4, 3]])
    assert indices.dtype == np.int64


def test_cum_sum_and_prod_exclusive_reverse():
    x = np.array([1, 2, 3, 4], np.int32)
    axis = np.array(0, np.int64)
    np.testing.assert_array_equal(_run("reduce.cum_sum", x, axis), [1, 3, 6, 10])
    np.testing.assert_array_equal(_run("reduce.cum_sum", x, axis, exclusive=1), [0, 1, 3, 6])
    np.testing.assert_array_equal(_run("reduce.cum_sum", x, axis, reverse=1), [10, 9, 7, 4])
    np.testing.assert_array_equal(_run("reduce.cum_sum", x, axis, exclusive=1, reverse=1), [9, 7, 4, 0])
    np.testing.assert_array_equal(_run("reduce.cum_prod", x, axis, exclusive=1), [1, 1, 2, 6])
    out = _run("reduce.cum_sum", np.ones((2, 3), np.float32), np.array(-1, np.int32))
    np.testing.assert_array_equal(out, [[1, 2, 3], [1, 2, 3]])


_NUMPY_REDUCTIONS = {
    "reduce.sum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "reduce.mean": lambda x, a, k: np.mean(x, axis=a, keepdims=k),
    "reduce.max": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "reduce.min": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "reduce.prod": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "reduce.l1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "reduce.l2": lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k)),
    "reduce.sum_square": lambda x, a, k: np.sum(x * x, axis=a, keepdims=k),
    "reduce.log_sum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)),
    "reduce.log_sum_exp": lambda x, a, k: np.log(np.sum(np.exp(x), axis=a, keepdims=k)),
}


@st.composite
def _reduction_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    x = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.5, 2.0)))
    axes = draw(st.lists(st.integers(-len(shape), len(shape) - 1), max_size=len(shape)))
    return x, axes, draw(st.sampled_from(sorted(_NUMPY_REDUCTIONS))), draw(st.integers(0, 1))


@settings(max_examples=150, deadline=None)
@given(_reduction_case())
def test_reductions_match_numpy(case):
    x, axes, op, keepdims = case
    numpy_axes = tuple(sorted({a % x.ndim for a in axes})) if axes else None
    expected = _NUMPY_REDUCTIONS[op](x, numpy_axes, bool(keepdims))
    out = _run(op, x, _axes(*axes) if axes else None, keepdims=keepdims)
    np.testing.assert_allclose(out, expected, rtol=1e-10)
    # The inferred shape is the kernel's.
    args = [TensorType(DType.FLOAT64, x.shape)] + ([_axes(*axes)] if axes else [])
    assert _shape(op, *args, attrs={"keepdims": keepdims}) == out.shape


# -- linalg inference -----------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, out", [
    ((3,), (3,), ()),
    ((3,), (2, 3, 4), (2, 4)),
    ((2, 3, 4), (4,), (2, 3)),
    ((5, 1, 3, 4), (6, 4, 2), (5, 6, 3, 2)),
    (("N", 3, 4), (4, 2), ("N", 3, 2)),
    (("N", "M", "K"), ("N", "K", 7), ("N", "M", 7)),
    ((1, 3, 4), ("B", 4, 2), ("B", 3, 2)),
])
def test_matmul_broadcasting_shapes(a, b, out):
    assert matmul_shape(a, b) == out
    assert _types("linalg.matmul", TensorType(F32, a), TensorType(F32, b)) == [TensorType(F32, out)]


def test_matmul_shape_errors():
    with pytest.raises(QirError, match="type inference failed"):
        _types("linalg.matmul", TensorType(F32, (2, 3)), TensorType(F32, (4, 2)))
    with pytest.raises(QirError):
        _types("linalg.matmul", TensorType(F32, (2, 3, 4)), TensorType(F32, (3, 4, 2)))
    assert _shape("linalg.matmul", TensorType(F32, None), TensorType(F32, (4, 2))) is None


def test_gemm_and_matmul_integer_inference():
    a, b = TensorType(F32, (4, "M")), TensorType(F32, (5, 4))
    assert _shape("linalg.gemm", a, b, attrs={"transA": 1, "transB": 1}) == ("M", 5)
    assert _shape("linalg.gemm", a, b, TensorType(F32, (5,)), attrs={"transA": 1, "transB": 1}) == ("M", 5)
    with pytest.raises(QirError, match="do not match"):
        _types("linalg.gemm", a, b, attrs={"transA": 1})
    with pytest.raises(QirError, match="broadcast"):
        _types("linalg.gemm", a, b, TensorType(F32, (3,)), attrs={"transA": 1, "transB": 1})
    assert _types("linalg.matmul_integer", TensorType(DType.UINT8, ("N", 3, 4)),
                  TensorType(DType.INT8, (4, 2))) == [TensorType(DType.INT32, ("N", 3, 2))]


@pytest.mark.parametrize("equation, shapes, out", [
    ("ij,jk->ik", [(2, 3), (3, 4)], (2, 4)),
    ("ij,jk", [(2, 3), (3, 4)], (2, 4)),           # implicit: letters seen once, sorted
    ("ba", [(2, 3)], (3, 2)),                       # implicit transposes to sorted order
    ("...ii ->...i", [("B", 5, 3, 3)], ("B", 5, 3)),
    ("bij, bjk -> bik", [("B", 2, 3), (1, 3, 4)], ("B", 2, 4)),
    ("i,i", [(5,), (5,)], ()),
    ("...j,j", [(2, 1, 3), (3,)], (2, 1)),
])
def test_einsum_shapes(equation, shapes, out):
    assert einsum_shape(equation, shapes) == out
    if all(isinstance(d, int) for s in shapes for d in s):
        arrays = [np.random.default_rng(0).random(s).astype(np.float32) for s in shapes]
        result = _run("linalg.einsum", *arrays, equation=equation)
        assert result.shape == out
        np.testing.assert_allclose(result, np.einsum(equation.replace(" ", ""), *arrays), rtol=1e-5)


def test_signal_inference():
    x = TensorType(F32, (1, 10, 10, 1))
    assert _shape("linalg.dft", x, None, np.array(1, np.int64)) == (1, 10, 10, 2)
    assert _shape("linalg.dft", x, None, np.array(1, np.int64), attrs={"onesided": 1}) == (1, 6, 10, 2)
    assert _shape("linalg.dft", TensorType(F32, (1, 6, 10, 2)), None, np.array(1, np.int64),
                  attrs={"onesided": 1, "inverse": 1}) == (1, 10, 10, 1)
    assert _shape("linalg.dft", x, np.array(16, np.int64)) == (1, 10, 16, 2)  # default axis -2
    assert _shape("linalg.stft", TensorType(F32, (1, 128, 1)), np.array(8, np.int64), None,
                  np.array(16, np.int64)) == (1, 15, 9, 2)
    assert _types("linalg.hann_window", np.array(10, np.int32), attrs={"output_datatype": DType.FLOAT64}) == \
        [TensorType(DType.FLOAT64, (10,))]
    assert _shape("linalg.mel_weight_matrix", *[np.array(v) for v in (8, 16, 8192, 0.0, 4096.0)]) == (9, 8)


# -- linalg kernels ---------------------------------------------------------------------------------

def test_gemm_attributes_and_broadcast_bias():
    rng = np.random.default_rng(1)
    a, b, c = rng.random((4, 3)), rng.random((5, 4)), rng.random((1, 5))
    out = _run("linalg.gemm", a, b, c, alpha=0.5, beta=2.0, transA=1, transB=1)
    np.testing.assert_allclose(out, 0.5 * a.T @ b.T + 2.0 * c)
    ints = _run("linalg.gemm", np.ones((2, 2), np.int32), np.ones((2, 2), np.int32))
    assert ints.dtype == np.int32 and (ints == 2).all()


def test_matmul_integer_zero_points():
    a = np.array([[11, 7, 3], [10, 6, 2]], np.uint8)
    b = np.array([[1, 4], [2, 5], [3, 6]], np.uint8)
    out = _run("linalg.matmul_integer", a, b, np.array([1, 2], np.uint8), np.array(1, np.uint8))
    expected = (a.astype(np.int32) - [[1], [2]]) @ (b.astype(np.int32) - 1)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int32


def test_det_of_batches_and_float16():
    x = np.array([[[1, 2], [3, 4]], [[2, 0], [0, 2]]], np.float16)
    out = _run("linalg.det", x)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), [-2.0, 4.0], rtol=1e-3)


def test_windows_match_numpy():
    size = np.array(8, np.int64)
    np.testing.assert_allclose(_run("linalg.hann_window", size), np.hanning(9)[:-1], atol=1e-6)
    np.testing.assert_allclose(_run("linalg.hamming_window", size, periodic=0),
                               0.5434782 - 0.4565217 * np.cos(2 * np.pi * np.arange(8) / 7), atol=1e-6)
    np.testing.assert_allclose(_run("linalg.blackman_window", size, periodic=0), np.blackman(8), atol=1e-6)


def test_dft_round_trip_and_stft():
    rng = np.random.default_rng(2)
    x = rng.random((2, 12, 1)).astype(np.float64)
    spectrum = _run("linalg.dft", x, None, np.array(1, np.int64), onesided=1)
    np.testing.assert_allclose(spectrum[..., 0] + 1j * spectrum[..., 1], np.fft.rfft(x[..., 0], axis=1))
    back = _run("linalg.dft", spectrum, None, np.array(1, np.int64), onesided=1, inverse=1)
    np.testing.assert_allclose(back, x, atol=1e-12)
    signal = rng.random((1, 64, 1))
    out = _run("linalg.stft", signal, np.array(8), np.hanning(16))
    expected = np.fft.rfft(signal[0, 8:24, 0] * np.hanning(16))
    np.testing.assert_allclose(out[0, 1, :, 0] + 1j * out[0, 1, :, 1], expected)


@st.composite
def _matmul_case(draw):
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    a_shape, b_shape = (*batch.input_shapes[0], m, k), (*batch.input_shapes[1], k, n)
    # Sometimes a 1-D operand, which numpy promotes and then drops.
    if draw(st.booleans()):
        a_shape = (k,)
    elif draw(st.booleans()):
        b_shape = (k,)
    ints = draw(st.booleans())
    dtype = np.int32 if ints else np.float32
    elements = st.integers(-50, 50) if ints else st.floats(-10, 10, width=32)
    return (draw(hnp.arrays(dtype, a_shape, elements=elements)),
            draw(hnp.arrays(dtype, b_shape, elements=elements)))


@settings(max_examples=150, deadline=None)
@given(_matmul_case())
def test_matmul_matches_numpy(case):
    a, b = case
    out = _run("linalg.matmul", a, b)
    expected = np.matmul(a, b)
    assert out.dtype == a.dtype
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert matmul_shape(a.shape, b.shape) == expected.shape


# -- ONNX converters: old opset forms -----------------------------------------------------------

def _model(node, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _import_and_run(model, feeds):
    graph = load_onnx(model)
    return graph, Interpreter(graph).run(feeds)


@pytest.mark.parametrize("op_type, opset", [("ReduceSum", 11), ("ReduceMean", 13), ("ReduceL2", 1)])
def test_reduce_axes_attribute_becomes_an_input(op_type, opset):
    node = helper.make_node(op_type, ["x"], ["y"], axes=[-1], keepdims=0)
    model = _model(node, [_f32("x", ["N", 3])], [_f32("y", None)], opset)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    graph, (y,) = _import_and_run(model, {"x": x})
    qnode = next(n for n in graph.nodes if n.op.startswith("reduce."))
    assert [int(a) for a in qnode.inputs[1].const] == [1]  # made non-negative at import
    assert graph.outputs[0].type.shape == ("N",)
    reference = {"ReduceSum": x.sum(1), "ReduceMean": x.mean(1), "ReduceL2": np.sqrt((x * x).sum(1))}
    np.testing.assert_allclose(y, reference[op_type], rtol=1e-6)


def test_top_k_opset1_and_arg_max_axis_normalized():
    node = helper.make_node("TopK", ["x"], ["v", "i"], k=2, axis=-1)
    model = _model(node, [_f32("x", [2, 4])], [_f32("v", None),
                   helper.make_tensor_value_info("i", TensorProto.INT64, None)], 1)
    x = np.array([[1, 4, 2, 4], [0, -1, 5, 3]], np.float32)
    graph, (v, i) = _import_and_run(model, {"x": x})
    assert graph.nodes[0].attrs["axis"] == 1
    np.testing.assert_array_equal(v, [[4, 4], [5, 3]])
    np.testing.assert_array_equal(i, [[1, 3], [2, 3]])
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=-2)
    graph = load_onnx(_model(node, [_f32("x", [2, 4])], [helper.make_tensor_value_info(
        "y", TensorProto.INT64, None)], 11))
    assert graph.nodes[0].attrs == {"axis": 0, "keepdims": 1, "select_last_index": 0}


def test_dft17_axis_attribute_and_gemm6_broadcast():
    node = helper.make_node("DFT", ["x"], ["y"], axis=1)
    model = _model(node, [_f32("x", [1, 8, 1])], [_f32("y", None)], 17)
    x = np.random.default_rng(3).random((1, 8, 1)).astype(np.float32)
    graph, (y,) = _import_and_run(model, {"x": x})
    assert graph.outputs[0].type.shape == (1, 8, 2)
    np.testing.assert_allclose(y[0, :, 0] + 1j * y[0, :, 1], np.fft.fft(x[0, :, 0]), rtol=1e-5, atol=1e-5)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], broadcast=1, transB=1)
    model = _model(node, [_f32("a", [2, 3]), _f32("b", [4, 3]), _f32("c", [4])], [_f32("y", None)], 6)
    a, b, c = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.arange(4, dtype=np.float32)
    _, (y,) = _import_and_run(model, {"a": a, "b": b, "c": c})
    np.testing.assert_array_equal(y, 3 + np.tile(c, (2, 1)))


def test_window_output_datatype_becomes_a_dtype():
    node = helper.make_node("HannWindow", ["n"], ["w"], output_datatype=TensorProto.DOUBLE, periodic=0)
    model = _model(node, [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
                   [helper.make_tensor_value_info("w", TensorProto.DOUBLE, None)], 17)
    graph, (w,) = _import_and_run(model, {"n": np.array(5, np.int64)})
    assert graph.nodes[0].attrs["output_datatype"] is DType.FLOAT64
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, np.hanning(5), atol=1e-12)
