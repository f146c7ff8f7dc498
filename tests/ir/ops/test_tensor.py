"""Unit tests of the tensor op family: shape inference (reshape 0/-1/allowzero, transpose,
concat, slice, with symbolic dims), kernels on ONNX's edge cases, property tests of
slice/transpose/concat against numpy on random shapes, and the converters' upgrade of old
opset forms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qir.frontends.onnx import load_onnx
from qir.ir.graph import Graph
from qir.ir.opdef import get_op
from qir.ir.types import DType, OptionalType, SequenceType, TensorType
from qir.ir.interpreter import Interpreter

F32 = DType.FLOAT32
I64 = DType.INT64


def _types(op, *inputs, attrs=None, num_outputs=None):
    """Output types of a node of ``op``; inputs are types (graph inputs) or arrays (constants)."""
    g = Graph("t")
    values = [None if x is None else g.add_constant(x) if isinstance(x, np.ndarray)
              else g.add_input(f"x{i}", x) for i, x in enumerate(inputs)]
    return [v.type for v in g.add_node(op, values, attrs or {}, num_outputs=num_outputs).outputs]


def _shape(op, *inputs, attrs=None):
    return _types(op, *inputs, attrs=attrs)[0].shape


def _run(op, *arrays, **attrs):
    """The op's kernel with the schema's defaults filled in."""
    opdef = get_op(op)
    defaults = {k: a.default for k, a in opdef.attrs.items() if not a.required}
    out = opdef.kernel(*arrays, **{**defaults, **attrs})
    return out


def _ints(*values):
    return np.array(values, dtype=np.int64)


def _f32(*shape):
    return TensorType(F32, shape)


# -- identity -----------------------------------------------------------------------------------

def test_identity_keeps_sequence_and_optional_types():
    seq = SequenceType(_f32(2, 3))
    assert _types("tensor.identity", seq) == [seq]
    opt = OptionalType(_f32("N"))
    assert _types("tensor.identity", opt) == [opt]
    assert _shape("tensor.identity", _f32("N", 3)) == ("N", 3)


def test_identity_copies_arrays():
    x = np.arange(3.0)
    y = _run("tensor.identity", x)
    assert y is not x and np.array_equal(x, y)
    assert _run("tensor.identity", None) is None


# -- reshape ------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_shape, target, allowzero, expected", [
    ((2, 3, 4), [0, -1], 0, (2, 12)),
    ((2, 3, 4), [-1], 0, (24,)),
    ((2, 3, 4), [4, 0, -1], 0, (4, 3, 2)),
    ((0, 3), [3, 0], 1, (3, 0)),
    ((0, 3), [-1, 3], 0, (0, 3)),
    (("N", 3, 4), [0, -1], 0, ("N", 12)),
    (("N", 3, 4), [-1, 12], 0, ("N", 12)),
    (("N", 3, 4), [0, 0, 2, 2], 0, ("N", 3, 2, 2)),
    (("N", "S", 8), [0, 0, 2, -1], 0, ("N", "S", 2, 4)),
    (("N", "S", 8), [-1, 8], 0, ("?", 8)),
    (("N", 6), [0, 2, -1], 0, ("N", 2, 3)),
])
def test_reshape_shape(in_shape, target, allowzero, expected):
    shape = _shape("tensor.reshape", _f32(*in_shape), _ints(*target), attrs={"allowzero": allowzero})
    assert shape == expected


def test_reshape_unknown_target_gives_rank():
    assert _shape("tensor.reshape", _f32(2, 3), TensorType(I64, (3,))) == ("?", "?", "?")
    assert _shape("tensor.reshape", _f32(2, 3), TensorType(I64, None)) is None


def test_reshape_kernel_zero_and_allowzero():
    x = np.zeros((2, 0, 3), np.float32)
    assert _run("tensor.reshape", x, _ints(0, -1)).shape == (2, 0)
    assert _run("tensor.reshape", np.zeros((0, 3)), _ints(3, 0), allowzero=1).shape == (3, 0)


# -- transpose, concat, slice inference ---------------------------------------------------------

def test_transpose_shape():
    assert _shape("tensor.transpose", _f32("N", 3, 5)) == (5, 3, "N")
    assert _shape("tensor.transpose", _f32("N", 3, 5), attrs={"perm": (0, 2, 1)}) == ("N", 5, 3)
    assert _shape("tensor.transpose", TensorType(F32, None)) is None


def test_concat_shape():
    assert _shape("tensor.concat", _f32("N", 3), _f32("N", 4), attrs={"axis": 1}) == ("N", 7)
    assert _shape("tensor.concat", _f32("N", 3), _f32("M", 3), attrs={"axis": 0}) == ("?", 3)
    assert _shape("tensor.concat", _f32(2, 3), _f32(4, 3), attrs={"axis": -2}) == (6, 3)
    assert _shape("tensor.concat", _f32("N", 3), TensorType(F32, None), attrs={"axis": 1}) == ("N", "?")


def test_slice_shape_constant_bounds():
    big = np.iinfo(np.int64).max
    shape = _shape("tensor.slice", _f32("N", 10, 7), _ints(1, 0), _ints(-1, big), _ints(1, 0), _ints(2, 1))
    assert shape == ("N", 4, 7)
    shape = _shape("tensor.slice", _f32("N", 10, 7), _ints(0), _ints(big), _ints(0))
    assert shape == ("N", 10, 7)
    shape = _shape("tensor.slice", _f32("N", 10), _ints(2), _ints(3), _ints(0))
    assert shape == ("?", 10)
    shape = _shape("tensor.slice", _f32(10), _ints(-1), _ints(-big), _ints(0), _ints(-3))
    assert shape == (4,)


def test_slice_shape_unknown_bounds_keeps_rank():
    idx = TensorType(I64, (1,))
    assert _shape("tensor.slice", _f32("N", 10), idx, idx, _ints(1)) == ("N", "?")
    assert _shape("tensor.slice", _f32("N", 10), idx, idx) == ("?", "?")


def test_squeeze_unsqueeze_shape():
    assert _shape("tensor.squeeze", _f32("N", 1, 3, 1), _ints(-1, 1)) == ("N", 3)
    assert _shape("tensor.squeeze", _f32(1, 3, 1)) == (3,)
    assert _shape("tensor.unsqueeze", _f32("N", 3), _ints(0, -1)) == (1, "N", 3, 1)


def test_split_shapes():
    types = _types("tensor.split", _f32(7, "N"), attrs={"num_outputs": 3})
    assert [t.shape for t in types] == [(3, "N"), (3, "N"), (1, "N")]
    types = _types("tensor.split", _f32("N", 6), _ints(2, 4), attrs={"axis": 1})
    assert [t.shape for t in types] == [("N", 2), ("N", 4)]


def test_shape_dependent_ops_infer_from_constants():
    assert _shape("tensor.expand", _f32(3, 1), _ints(2, 1, 4)) == (2, 3, 4)
    assert _shape("tensor.tile", _f32("N", 2), _ints(1, 3)) == ("N", 6)
    assert _shape("tensor.pad", _f32("N", 2), _ints(0, 1, 0, 2)) == ("N", 5)
    assert _shape("tensor.constant_of_shape", _ints(2, 3)) == (2, 3)
    assert _shape("tensor.range", *[np.array(v, np.float32) for v in (0, 5, 2)]) == (3,)
    assert _shape("tensor.gather", _f32("N", 5, 4), TensorType(I64, (2, 3)), attrs={"axis": 1}) == ("N", 2, 3, 4)
    assert _types("tensor.shape", _f32("N", 3, 4), attrs={"start": 1})[0] == TensorType(I64, (2,))
    assert _shape("tensor.resize", _f32(1, 3, 4, 4), None, np.array([1, 1, 2, 0.5], np.float32)) == (1, 3, 8, 2)
    assert _shape("tensor.depth_to_space", _f32("N", 8, 2, 3), attrs={"blocksize": 2}) == ("N", 2, 4, 6)


# -- kernels on edge cases ----------------------------------------------------------------------

def test_slice_negative_steps_clamp_like_onnx():
    x = np.arange(10)
    big = np.iinfo(np.int64).max
    assert _run("tensor.slice", x, _ints(20), _ints(-big), None, _ints(-1)).tolist() == list(range(9, -1, -1))
    assert _run("tensor.slice", x, _ints(-3), _ints(big)).tolist() == [7, 8, 9]
    # A start before the first element is clamped to 0 (Python's x[-12:-12:-1] would be empty).
    assert _run("tensor.slice", x, _ints(-12), _ints(-12), None, _ints(-1)).tolist() == [0]


def test_pad_modes_and_negative_pads():
    x = np.array([[1, 2, 3]], np.float32)
    assert _run("tensor.pad", x, _ints(0, 2, 0, 1), mode="reflect").tolist() == [[3, 2, 1, 2, 3, 2]]
    assert _run("tensor.pad", x, _ints(0, 2, 0, 1), mode="wrap").tolist() == [[2, 3, 1, 2, 3, 1]]
    assert _run("tensor.pad", x, _ints(0, -1, 0, 1), np.float32(9)).tolist() == [[2, 3, 9]]
    assert _run("tensor.pad", x, _ints(1, 1), None, _ints(1), mode="edge").tolist() == [[1, 1, 2, 3, 3]]


def test_scatter_reductions():
    data = np.zeros(3, np.float32)
    out = _run("tensor.scatter_elements", data, _ints(0, 0, -1), np.ones(3, np.float32), reduction="add")
    assert out.tolist() == [2, 0, 1] and data.tolist() == [0, 0, 0]
    out = _run("tensor.scatter_nd", np.ones((2, 2)), _ints([0, 1], [0, 1]), np.array([3.0, 4.0]), reduction="mul")
    assert out.tolist() == [[1, 12], [1, 1]]


def test_gather_nd_batch_dims():
    data = np.arange(8).reshape(2, 2, 2)
    out = _run("tensor.gather_nd", data, _ints([1], [0]), batch_dims=1)
    assert out.tolist() == [[2, 3], [4, 5]]


def test_unique_unsorted_renumbers_inverse():
    y, first, inverse, counts = _run("tensor.unique", np.array([2, 1, 1, 3, 4, 3]), sorted=0)
    assert y.tolist() == [2, 1, 3, 4] and first.tolist() == [0, 1, 3, 4]
    assert inverse.tolist() == [0, 1, 1, 2, 3, 2] and counts.tolist() == [1, 2, 2, 1]


def test_space_to_depth_inverts_depth_to_space():
    x = np.arange(2 * 8 * 2 * 3, dtype=np.float32).reshape(2, 8, 2, 3)
    for mode in ("DCR", "CRD"):
        y = _run("tensor.depth_to_space", x, blocksize=2, mode=mode)
        assert np.array_equal(_run("tensor.space_to_depth", y, blocksize=2, mode=mode), x)


def test_resize_nearest_and_linear():
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    up = _run("tensor.resize", x, None, np.array([1, 1, 2, 2], np.float32),
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    assert np.array_equal(up, x.repeat(2, axis=2).repeat(2, axis=3))
    lin = _run("tensor.resize", x, None, None, _ints(3, 3), axes=(2, 3), mode="linear",
               coordinate_transformation_mode="align_corners")
    assert lin[0, 0].tolist() == [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]]


# -- property tests against numpy ---------------------------------------------------------------

_dims = st.lists(st.integers(0, 5), min_size=1, max_size=4)
_bound = st.integers(-8, 8) | st.sampled_from([np.iinfo(np.int64).max, -np.iinfo(np.int64).max])


def _onnx_slice_indices(dim, start, end, step):
    """The indices ONNX Slice picks, transcribed from the spec. Unlike Python's slicing, a start
    before the first element is clamped to 0 for negative steps too (x[-7:-7:-1] of 5 is [x0])."""
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return np.arange(start, end, step, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(shape=_dims, data=st.data())
def test_slice_matches_numpy(shape, data):
    x = np.arange(int(np.prod(shape))).reshape(shape)
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                              max_size=len(shape), unique_by=lambda a: a % len(shape)))
    starts = data.draw(st.lists(_bound, min_size=len(axes), max_size=len(axes)))
    ends = data.draw(st.lists(_bound, min_size=len(axes), max_size=len(axes)))
    steps = data.draw(st.lists(st.integers(-3, 3).filter(bool), min_size=len(axes), max_size=len(axes)))
    expected = x
    for a, s, e, k in zip(axes, starts, ends, steps):
        expected = np.take(expected, _onnx_slice_indices(shape[a], s, e, k), axis=a)
    args = [_ints(*starts), _ints(*ends), _ints(*axes), _ints(*steps)]
    assert np.array_equal(_run("tensor.slice", x, *args), expected)
    assert _shape("tensor.slice", TensorType(I64, shape), *args) == expected.shape


@settings(max_examples=100, deadline=None)
@given(shape=_dims, data=st.data())
def test_transpose_matches_numpy(shape, data):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    expected = np.transpose(x, perm)
    assert np.array_equal(_run("tensor.transpose", x, perm=perm), expected)
    assert _shape("tensor.transpose", _f32(*shape), attrs={"perm": perm}) == expected.shape


@settings(max_examples=100, deadline=None)
@given(shape=_dims, data=st.data())
def test_concat_matches_numpy(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
    arrays = []
    for i, n in enumerate(sizes):
        s = list(shape)
        s[axis] = n
        arrays.append(np.full(s, i, np.float32))
    expected = np.concatenate(arrays, axis=axis)
    assert np.array_equal(_run("tensor.concat", *arrays, axis=axis), expected)
    assert _shape("tensor.concat", *[_f32(*a.shape) for a in arrays], attrs={"axis": axis}) == expected.shape


# -- converters ---------------------------------------------------------------------------------

def _model(node, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _node_of(graph, op):
    return next(n for n in graph.nodes if n.op == op)


def test_old_reshape_squeeze_slice_attrs_become_inputs():
    g = load_onnx(_model(helper.make_node("Reshape", ["x"], ["y"], shape=[0, -1]),
                         [_vi("x", [2, 3, 4])], [_vi("y", None)], 4))
    node = _node_of(g, "tensor.reshape")
    assert node.inputs[1].const.tolist() == [0, -1] and node.output.type.shape == (2, 12)
    g = load_onnx(_model(helper.make_node("Squeeze", ["x"], ["y"], axes=[-1]),
                         [_vi("x", [2, 1])], [_vi("y", None)], 11))
    assert _node_of(g, "tensor.squeeze").inputs[1].const.tolist() == [1]
    g = load_onnx(_model(helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[3], axes=[-1]),
                         [_vi("x", [2, 5])], [_vi("y", None)], 9))
    node = _node_of(g, "tensor.slice")
    assert [v.const.tolist() for v in node.inputs[1:]] == [[1], [3], [1]]
    assert node.output.type.shape == (2, 2)


def test_old_split_and_pad_forms_run():
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    g = load_onnx(_model(helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[2, 3]),
                         [_vi("x", [2, 5])], [_vi("a", None), _vi("b", None)], 11))
    a, b = Interpreter(g).run({"x": x})
    assert np.array_equal(a, x[:, :2]) and np.array_equal(b, x[:, 2:])
    g = load_onnx(_model(helper.make_node("Split", ["x"], ["a", "b"], axis=0),
                         [_vi("x", [2, 5])], [_vi("a", None), _vi("b", None)], 11))
    assert _node_of(g, "tensor.split").attrs["num_outputs"] == 2
    g = load_onnx(_model(helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 0, 1], value=7.0),
                         [_vi("x", [2, 5])], [_vi("y", None)], 2))
    (y,) = Interpreter(g).run({"x": x})
    assert y.shape == (2, 7) and y[0, 0] == 7


def test_transpose_perm_made_explicit_and_upsample_becomes_resize():
    g = load_onnx(_model(helper.make_node("Transpose", ["x"], ["y"]), [_vi("x", [2, 3, 4])],
                         [_vi("y", None)], 13))
    assert _node_of(g, "tensor.transpose").attrs["perm"] == (2, 1, 0)
    g = load_onnx(_model(helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 2.0]),
                         [_vi("x", [1, 1, 2, 2])], [_vi("y", None)], 7))
    node = _node_of(g, "tensor.resize")
    assert node.output.type.shape == (1, 1, 4, 4)
