"""Control-flow, sequence, optional and quantization ops: built with the Graph API, run by the
reference interpreter, and checked against plain numpy / stated properties."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qir.ir.graph import Graph
from qir.ir.opdef import get_op
from qir.ir.ops.quant import conv_nd, expand_param
from qir.ir.types import DType, OptionalType, SequenceType, TensorType
from qir.ir.verifier import verify
from qir.ir.interpreter import Interpreter

I64, F32, BOOL = DType.INT64, DType.FLOAT32, DType.BOOL


def run(graph, **feeds):
    verify(graph)
    return Interpreter(graph).run(feeds)


# -- Loop -------------------------------------------------------------------------------------

def counting_loop(with_cond_limit: bool = False):
    """for i in range(M) [while acc < limit]: acc += i; scan out acc."""
    g = Graph("count")
    m = g.add_input("M", TensorType(I64, ()))
    acc0 = g.add_input("acc0", TensorType(I64, ()))
    limit = g.add_input("limit", TensorType(I64, ())) if with_cond_limit else None
    body = Graph("body", parent=g)
    i = body.add_input("i", TensorType(I64, ()))
    cond_in = body.add_input("cond_in", TensorType(BOOL, ()))
    acc = body.add_input("acc", TensorType(I64, ()))
    new_acc = body.add_node("elementwise.add", [acc, i], name="step").output
    if with_cond_limit:
        # The outer `limit` is read from inside the body (a captured outer value).
        cond_out = body.add_node("elementwise.less", [new_acc, limit], name="keep").output
    else:
        cond_out = body.add_node("tensor.identity", [cond_in], name="same_cond").output
    scan_out = body.add_node("tensor.identity", [new_acc], name="trace").output
    body.outputs = [cond_out, new_acc, scan_out]
    cond = g.add_constant(np.array(True), "cond")
    node = g.add_node("control.loop", [m, cond, acc0], {"body": body}, name="loop")
    g.outputs = list(node.outputs)
    return g, node


def test_loop_carries_values_and_stacks_scan_outputs():
    g, node = counting_loop()
    assert node.outputs[0].type == TensorType(I64, ())
    assert node.outputs[1].type == TensorType(I64, ("?",))
    final, trace = run(g, M=np.array(5, np.int64), acc0=np.array(10, np.int64))
    assert final == 10 + sum(range(5))
    np.testing.assert_array_equal(trace, 10 + np.cumsum(np.arange(5)))


def test_loop_stops_on_cond_and_reads_outer_values():
    g, _ = counting_loop(with_cond_limit=True)
    final, trace = run(g, M=np.array(100, np.int64), acc0=np.array(0, np.int64),
                       limit=np.array(10, np.int64))
    # acc: 0, 1, 3, 6, 10 -> stops after the iteration that reached 10
    assert final == 10
    np.testing.assert_array_equal(trace, [0, 1, 3, 6, 10])


def test_loop_zero_trips_returns_initial_values_and_empty_scans():
    g, _ = counting_loop()
    final, trace = run(g, M=np.array(0, np.int64), acc0=np.array(7, np.int64))
    assert final == 7 and trace.shape == (0,) and trace.dtype == np.int64


def test_loop_output_takes_the_type_the_body_yields():
    # ONNX types a carried output by the body's output: an optional<seq> fed in, a seq yielded
    # (as in ONNX's loop16_seq_none) gives a seq, not the initial value's optional<seq>.
    seq_f32 = SequenceType(TensorType(F32, ()))
    g = Graph("grow")
    m = g.add_input("M", TensorType(I64, ()))
    opt = g.add_input("opt", OptionalType(seq_f32))
    body = Graph("body", parent=g)
    body.add_input("i", TensorType(I64, ()))
    cond_in = body.add_input("cond_in", TensorType(BOOL, ()))
    opt_in = body.add_input("opt_in", OptionalType(seq_f32))
    seq = body.add_node("control.optional_get_element", [opt_in], name="get").output
    grown = body.add_node("control.sequence_insert", [seq, body.add_constant(np.array(1, np.float32), "one")],
                          name="insert").output
    body.outputs = [body.add_node("tensor.identity", [cond_in], name="same").output, grown]
    node = g.add_node("control.loop", [m, g.add_constant(np.array(True), "cond"), opt], {"body": body},
                      name="loop")
    g.outputs = list(node.outputs)
    assert node.outputs[0].type == seq_f32
    (final,) = run(g, M=np.array(2, np.int64), opt=[np.array(0, np.float32)])
    assert [float(v) for v in final] == [0.0, 1.0, 1.0]


def test_onnx_loop16_seq_none_outputs_match_the_reference():
    # onnx's runner cannot compare this case (it calls len() on the 0-d first element of the
    # sequence); compare qir's outputs with the reference outputs here instead.
    node_cases = pytest.importorskip("onnx.backend.test.case.node")
    import qir

    case = next(c for c in node_cases.collect_testcases(None) if c.name == "test_loop16_seq_none")
    (inputs, (expected,)), = case.data_sets
    model = qir.compile(case.model)
    got = model.run(dict(zip([i.name for i in case.model.graph.input], inputs)))["seq_res"]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# -- If ---------------------------------------------------------------------------------------

def test_if_merges_branch_types_and_runs_one_branch():
    g = Graph("choose")
    c = g.add_input("c", TensorType(BOOL, ()))
    x = g.add_input("x", TensorType(F32, (2, 3)))
    then_g = Graph("then", parent=g)
    then_g.outputs = [then_g.add_node("tensor.identity", [x], name="pass").output]
    else_g = Graph("else", parent=g)
    five = else_g.add_constant(np.full((4, 3), 5, np.float32), "five")
    else_g.outputs = [else_g.add_node("tensor.identity", [five], name="const").output]
    node = g.add_node("control.if", [c], {"then_branch": then_g, "else_branch": else_g}, name="if")
    g.outputs = [node.output]
    assert node.output.type == TensorType(F32, ("?", 3))
    x_val = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run(g, c=np.array(True), x=x_val)[0], x_val)
    np.testing.assert_array_equal(run(g, c=np.array(False), x=x_val)[0], np.full((4, 3), 5))


# -- Scan -------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_dir,out_dir,out_axis", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_scan_cumulative_sum_directions_and_axes(in_dir, out_dir, out_axis):
    g = Graph("cumsum")
    init = g.add_input("init", TensorType(F32, (2,)))
    xs = g.add_input("xs", TensorType(F32, (4, 2)))
    body = Graph("body", parent=g)
    state = body.add_input("s", TensorType(F32, (2,)))
    x = body.add_input("x", TensorType(F32, (2,)))
    total = body.add_node("elementwise.add", [state, x], name="acc").output
    out = body.add_node("tensor.identity", [total], name="emit").output
    body.outputs = [total, out]
    node = g.add_node("control.scan", [init, xs],
                      {"body": body, "num_scan_inputs": 1, "scan_input_directions": (in_dir,),
                       "scan_output_directions": (out_dir,), "scan_output_axes": (out_axis,)}, name="scan")
    g.outputs = list(node.outputs)
    assert node.outputs[1].type.shape == ((4, 2) if out_axis == 0 else (2, 4))
    xs_val = np.arange(8, dtype=np.float32).reshape(4, 2)
    final, ys = run(g, init=np.zeros(2, np.float32), xs=xs_val)
    steps = np.cumsum(xs_val[::-1] if in_dir else xs_val, axis=0)
    expected = steps[::-1] if out_dir else steps
    np.testing.assert_allclose(final, xs_val.sum(axis=0))
    np.testing.assert_allclose(ys, expected if out_axis == 0 else expected.T)


# -- sequences and optionals ------------------------------------------------------------------

def test_sequence_ops_round_trip():
    g = Graph("seq")
    x = g.add_input("x", TensorType(F32, (6, 2)))
    seq = g.add_node("control.split_to_sequence", [x, g.add_constant(np.array(2, np.int64), "two")],
                     {"axis": 0}, name="split").output
    assert seq.type == SequenceType(TensorType(F32, ("?", 2)))
    pos = g.add_constant(np.array(-1, np.int64), "last")
    seq2 = g.add_node("control.sequence_erase", [seq, pos], name="erase").output
    seq3 = g.add_node("control.sequence_insert", [seq2, x, g.add_constant(np.array(0, np.int64), "zero")],
                      name="insert").output
    length = g.add_node("control.sequence_length", [seq3], name="len").output
    cat = g.add_node("control.concat_from_sequence", [seq3], {"axis": 0}, name="cat").output
    at = g.add_node("control.sequence_at", [seq3, pos], name="at").output
    g.outputs = [length, cat, at]
    x_val = np.arange(12, dtype=np.float32).reshape(6, 2)
    n, joined, last = run(g, x=x_val)
    assert n == 3 and n.dtype == np.int64
    np.testing.assert_array_equal(joined, np.concatenate([x_val, x_val[:4]]))
    np.testing.assert_array_equal(last, x_val[2:4])


def test_optional_has_and_get_element():
    g = Graph("opt")
    x = g.add_input("x", TensorType(F32, (3,)))
    full = g.add_node("control.optional", [x], name="full").output
    empty = g.add_node("control.optional", [], {"type": TensorType(F32, (3,))}, name="empty").output
    assert full.type == OptionalType(TensorType(F32, (3,)))
    has_full = g.add_node("control.optional_has_element", [full], name="has_full").output
    has_empty = g.add_node("control.optional_has_element", [empty], name="has_empty").output
    got = g.add_node("control.optional_get_element", [full], name="get").output
    g.outputs = [has_full, has_empty, got]
    a, b, c = run(g, x=np.ones(3, np.float32))
    assert a and not b
    np.testing.assert_array_equal(c, np.ones(3))


# -- quantization -----------------------------------------------------------------------------

quantize = get_op("quant.quantize_linear").kernel
dequantize = get_op("quant.dequantize_linear").kernel
INT_TYPES = [DType.UINT8, DType.INT8, DType.UINT16, DType.INT16, DType.INT4, DType.UINT4]
floats = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                    elements=st.floats(-1000, 1000, width=32))


def q_args(dtype):
    return dict(axis=1, saturate=1, block_size=0, output_dtype=dtype, precision=None)


@settings(max_examples=60, deadline=None)
@given(x=floats, scale=st.floats(0.0009765625, 10, width=32), dtype=st.sampled_from(INT_TYPES),
       zp_frac=st.floats(0, 1))
def test_quantize_dequantize_round_trip_error_is_half_a_step(x, scale, dtype, zp_frac):
    info = ml_dtypes.iinfo(dtype.numpy)
    zp = np.array(round(int(info.min) + zp_frac * (int(info.max) - int(info.min))), dtype=dtype.numpy)
    scale = np.float32(scale)
    q = quantize(x, scale, zp, **q_args(dtype))
    assert q.dtype == dtype.numpy and q.shape == x.shape
    back = dequantize(q, scale, zp, axis=1, block_size=0, output_dtype=None)
    assert back.dtype == np.float32
    # Values inside the representable range come back within half a step; others saturate.
    low = (float(info.min) - int(zp)) * scale
    high = (float(info.max) - int(zp)) * scale
    inside = (x >= low) & (x <= high)
    np.testing.assert_array_less(np.abs(back - x)[inside], scale * 0.5 * (1 + 1e-5) + 1e-6)
    assert np.all(q.astype(np.int64)[x > high] == int(info.max))
    assert np.all(q.astype(np.int64)[x < low] == int(info.min))
    # Quantizing a dequantized value gives it back (idempotence).
    np.testing.assert_array_equal(quantize(back, scale, zp, **q_args(dtype)), q)


def test_quantize_rounds_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32)
    q = quantize(x, np.float32(1), np.array(0, np.int8), **q_args(DType.INT8))
    np.testing.assert_array_equal(q, [0, 2, 2, 0, -2, -2])


def test_quantize_per_axis_and_blocked():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    per_axis = quantize(x, np.array([1, 2, 4], np.float32), None, **{**q_args(DType.UINT8), "axis": 0})
    np.testing.assert_array_equal(per_axis, np.rint(x / np.array([[1], [2], [4]])))
    scales = np.array([[1, 2], [1, 2], [4, 8]], np.float32)  # blocks of 2 along axis 1
    blocked = quantize(x, scales, None, **{**q_args(DType.UINT8), "block_size": 2})
    np.testing.assert_array_equal(blocked, np.rint(x / np.repeat(scales, 2, axis=1)))
    # A short last block: 3 elements in blocks of 2 need 2 entries.
    np.testing.assert_array_equal(expand_param(np.array([[1, 3], [2, 4]]), (2, 3), 1, 2),
                                  [[1, 1, 3], [2, 2, 4]])


def test_quantize_float8_saturates_unless_told_not_to():
    x = np.array([1e6, -1e6, 1.0], np.float32)
    sat = quantize(x, np.float32(1), None, **q_args(DType.FLOAT8E4M3FN))
    np.testing.assert_array_equal(sat.astype(np.float32), [448, -448, 1])
    raw = quantize(x, np.float32(1), None, **{**q_args(DType.FLOAT8E4M3FN), "saturate": 0})
    assert np.isnan(raw.astype(np.float32)[0])


def test_dynamic_quantize_covers_zero_and_range():
    x = np.array([[-1.0, 0.5], [2.0, 3.0]], np.float32)
    y, scale, zp = get_op("quant.dynamic_quantize_linear").kernel(x)
    assert y.dtype == np.uint8 and scale.shape == () and zp.dtype == np.uint8
    np.testing.assert_allclose(scale, 4.0 / 255)
    np.testing.assert_allclose((y.astype(np.float32) - zp) * scale, x, atol=float(scale) / 2 + 1e-7)


def test_conv_nd_matches_direct_convolution():
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 5, size=(1, 4, 6, 5))
    w = rng.integers(-3, 3, size=(6, 2, 3, 2))
    y = conv_nd(x, w, auto_pad="NOTSET", dilations=(2, 1), group=2, kernel_shape=(), pads=(1, 0, 1, 1),
                strides=(1, 2))
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (0, 1)])
    expected = np.zeros_like(y)
    for m in range(6):
        g = m // 3
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                patch = xp[0, 2 * g:2 * g + 2, i:i + 5:2, 2 * j:2 * j + 2]
                expected[0, m, i, j] = np.sum(patch * w[m])
    np.testing.assert_array_equal(y, expected)


def test_qlinear_matmul_per_row_and_column_scales():
    a = np.array([[10, 20], [30, 40]], np.uint8)
    b = np.array([[1, 2], [3, 4]], np.uint8)
    a_scale, b_scale = np.array([0.5, 1.0], np.float32), np.array([1.0, 2.0], np.float32)
    y = get_op("quant.qlinear_matmul").kernel(a, a_scale, np.array([10, 0], np.uint8), b, b_scale,
                                              np.array(1, np.uint8), np.float32(1), np.array(0, np.uint8))
    real_a = (a.astype(np.float64) - [[10], [0]]) * [[0.5], [1.0]]
    real_b = (b.astype(np.float64) - 1) * [1.0, 2.0]
    np.testing.assert_array_equal(y, np.clip(np.rint(real_a @ real_b), 0, 255))


# -- misc -------------------------------------------------------------------------------------

def test_non_max_suppression_keeps_best_non_overlapping_boxes():
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 5, 1, 6], [1, 1, 0, 0]]], np.float32)
    scores = np.array([[[0.9, 0.8, 0.7, 0.95]]], np.float32)
    nms = get_op("misc.non_max_suppression").kernel
    got = nms(boxes, scores, np.array([10], np.int64), np.array([0.5], np.float32), None, center_point_box=0)
    # Box 3 is box 0 with flipped corners (best score); boxes 0 and 1 overlap it; box 2 is apart.
    np.testing.assert_array_equal(got, [[0, 0, 3], [0, 0, 2]])
    capped = nms(boxes, scores, np.array([1], np.int64), np.array([0.5], np.float32),
                 np.array([0.96], np.float32), center_point_box=0)
    assert capped.shape == (0, 3) and capped.dtype == np.int64


def test_tf_idf_vectorizer_counts_skip_grams():
    tfidf = get_op("misc.tf_idf_vectorizer").kernel
    x = np.array([[1, 2, 1, 2, 3]], np.int64)
    kw = dict(max_gram_length=2, min_gram_length=1, max_skip_count=1, ngram_counts=(0, 2),
              ngram_indexes=(0, 1, 2, 3), pool_int64s=(1, 2, 1, 2, 1, 1), pool_strings=(), weights=())
    # unigrams 1, 2; bigrams (1,2) at distance 1 and 2, (1,1) at distance 2.
    np.testing.assert_array_equal(tfidf(x, mode="TF", **kw), [[2, 2, 2, 1]])
    np.testing.assert_array_equal(tfidf(x, mode="IDF", **{**kw, "weights": (1, 2, 3, 4)}), [[1, 2, 3, 4]])


# -- ONNX import: Scan-8 (batched) becomes a loop over the batch of Scan-9 -------------------

def test_scan8_batched_import_matches_numpy():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from qir.frontends.onnx import load_onnx

    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y"])],
        "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    node = helper.make_node("Scan", ["", "init", "xs"], ["final", "ys"], body=body, num_scan_inputs=1)
    graph = helper.make_graph(
        [node], "scan8",
        [helper.make_tensor_value_info("init", TensorProto.FLOAT, [3, 2]),
         helper.make_tensor_value_info("xs", TensorProto.FLOAT, [3, 4, 2])],
        [helper.make_tensor_value_info("final", TensorProto.FLOAT, [3, 2]),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, [3, 4, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    g = load_onnx(model)
    assert [n.op for n in g.nodes if n.op.startswith("control.")][-1] == "control.loop"
    init = np.arange(6, dtype=np.float32).reshape(3, 2)
    xs = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
    final, ys = Interpreter(g).run({"init": init, "xs": xs})
    np.testing.assert_allclose(ys, init[:, None, :] + np.cumsum(xs, axis=1))
    np.testing.assert_allclose(final, init + xs.sum(axis=1))


def test_scan8_keeps_the_model_output_names():
    # An unnamed Scan-8 node is known by its first output, "y"; the loop body the converter
    # builds must not take that name (ONNX's test_scan_sum gave the output "y_20").
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import qir

    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [2])])
    node = helper.make_node("Scan", ["", "init", "xs"], ["y", "z"], body=body, num_scan_inputs=1)
    graph = helper.make_graph(
        [node], "scan8",
        [helper.make_tensor_value_info("init", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("xs", TensorProto.FLOAT, [1, 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    xs = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    out = qir.compile(model).run({"init": np.zeros((1, 2), np.float32), "xs": xs})
    assert list(out) == ["y", "z"]
    np.testing.assert_allclose(out["y"], xs.sum(axis=1))
    np.testing.assert_allclose(out["z"], np.cumsum(xs, axis=1))
