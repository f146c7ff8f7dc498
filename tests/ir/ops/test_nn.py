"""Unit tests of the nn op family: conv/pool output-shape inference (symbolic batch dims, auto_pad,
ceil mode), conv and conv_transpose against naive direct loops (hypothesis over shapes, strides,
pads, dilations and groups), pooling edge cases, and the ONNX converter's upgrades of old opset
forms (softmax axis semantics before opset 13, auto_pad resolution, legacy attributes)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import qir
from qir.ir.graph import Graph
from qir.ir.types import DType, TensorType
from tests.ir.ops.optest import f32, infer_node as _node, run_kernel as _run


# -- shape inference -------------------------------------------------------------------------

def test_conv_infers_spatial_dims_and_keeps_symbolic_batch():
    out = _node("nn.conv", f32("N", 3, 32, 30), f32(16, 3, 3, 3),
                attrs={"strides": (2, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1)})
    assert out == [f32("N", 16, 16, 15)]
    # Dilation widens the kernel; no padding.
    out = _node("nn.conv", f32("B", 4, 10), f32(8, 2, 3), attrs={"dilations": (3,), "group": 2})
    assert out == [f32("B", 8, 4)]


def test_conv_same_auto_pad_with_symbolic_spatial_dims():
    out = _node("nn.conv", f32("N", 3, "H", "W"), f32(8, 3, 3, 3), attrs={"auto_pad": "SAME_UPPER"})
    assert out == [f32("N", 8, "H", "W")]
    out = _node("nn.conv", f32("N", 3, "H", 9), f32(8, 3, 3, 3),
                attrs={"auto_pad": "SAME_LOWER", "strides": (2, 2)})
    assert out[0].shape[:2] == ("N", 8) and out[0].shape[3] == 5 and isinstance(out[0].shape[2], str)


def test_pool_output_shapes_floor_and_ceil_mode():
    attrs = {"kernel_shape": (3, 3), "strides": (2, 2)}
    assert _node("nn.max_pool", f32("N", 2, 32, 32), attrs=attrs)[0] == f32("N", 2, 15, 15)
    assert _node("nn.max_pool", f32("N", 2, 32, 32), attrs={**attrs, "ceil_mode": 1})[0] == f32("N", 2, 16, 16)
    # The last ceil-mode window may not start in the end padding.
    assert _node("nn.average_pool", f32(1, 1, 5, 5),
                 attrs={"kernel_shape": (2, 2), "strides": (2, 2), "pads": (1, 1, 1, 1), "ceil_mode": 1}
                 )[0] == f32(1, 1, 3, 3)
    assert _node("nn.global_average_pool", f32("N", 7, 5, 6, 2)) == [f32("N", 7, 1, 1, 1)]


def test_max_pool_indices_are_int64():
    g = Graph("t")
    x = g.add_input("x", f32("N", 1, 4, 4))
    node = g.add_node("nn.max_pool", [x], {"kernel_shape": (2, 2), "strides": (2, 2)}, num_outputs=2)
    assert [v.type for v in node.outputs] == [f32("N", 1, 2, 2), TensorType(DType.INT64, ("N", 1, 2, 2))]


def test_conv_transpose_shape_from_output_padding_and_output_shape():
    out = _node("nn.conv_transpose", f32("N", 4, 5, 5), f32(4, 3, 3, 3),
                attrs={"strides": (2, 2), "pads": (1, 1, 1, 1), "output_padding": (1, 1)})
    assert out == [f32("N", 3, 10, 10)]
    out = _node("nn.conv_transpose", f32("N", 4, 5, 5), f32(4, 1, 3, 3),
                attrs={"group": 2, "output_shape": (11, 12), "strides": (2, 2)})
    assert out == [f32("N", 2, 11, 12)]


def test_layer_norm_statistics_shapes():
    y, mean, inv = _node("nn.layer_normalization", f32("N", 5, 6), f32(6), attrs={"axis": 2})
    assert y == f32("N", 5, 6) and mean == f32("N", 5, 1) and inv == f32("N", 5, 1)


# -- conv against a direct loop -------------------------------------------------------------

def naive_conv(x, w, b, strides, pads, dilations, group):
    """Direct-loop N-D convolution: the definition, one output element at a time."""
    n = x.ndim - 2
    N, C = x.shape[:2]
    M = w.shape[0]
    K = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[n + i]) for i in range(n)])
    out = [(x.shape[2 + i] + pads[i] + pads[n + i] - (K[i] - 1) * dilations[i] - 1) // strides[i] + 1
           for i in range(n)]
    y = np.zeros((N, M, *out), dtype=np.float64)
    cg, mg = C // group, M // group
    for nb, m in itertools.product(range(N), range(M)):
        g = m // mg
        for o in itertools.product(*(range(v) for v in out)):
            acc = 0.0 if b is None else float(b[m])
            for c in range(cg):
                for k in itertools.product(*(range(v) for v in K)):
                    pos = tuple(o[i] * strides[i] + k[i] * dilations[i] for i in range(n))
                    acc += float(xp[(nb, g * cg + c) + pos]) * float(w[(m, c) + k])
            y[(nb, m) + o] = acc
    return y


@st.composite
def conv_cases(draw):
    n = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 3]))
    cg, mg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(n)]
    dilations = [draw(st.integers(1, 2)) for _ in range(n)]
    strides = [draw(st.integers(1, 3)) for _ in range(n)]
    pads = [draw(st.integers(0, 2)) for _ in range(2 * n)]
    # Inputs at least as large as the dilated kernel so every output dim is >= 1.
    spatial = [draw(st.integers((k - 1) * d + 1, (k - 1) * d + 5 - (n == 3) * 2))
               for k, d in zip(kernel, dilations)]
    batch = draw(st.integers(1, 2))
    with_bias = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return n, group, cg, mg, kernel, dilations, strides, pads, spatial, batch, with_bias, seed


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_conv_matches_direct_loop(case):
    n, group, cg, mg, kernel, dilations, strides, pads, spatial, batch, with_bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cg * group, *spatial)).astype(np.float32)
    w = rng.standard_normal((mg * group, cg, *kernel)).astype(np.float32)
    b = rng.standard_normal(mg * group).astype(np.float32) if with_bias else None
    y = _run("nn.conv", x, w, b, strides=tuple(strides), pads=tuple(pads), dilations=tuple(dilations),
             group=group, kernel_shape=tuple(kernel))
    expected = naive_conv(x, w, b, strides, pads, dilations, group)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    # Shape inference agrees with the kernel.
    t = _node("nn.conv", f32(*x.shape), f32(*w.shape),
              attrs={"strides": tuple(strides), "pads": tuple(pads), "dilations": tuple(dilations),
                     "group": group})[0]
    assert t.shape == y.shape


def naive_conv_transpose(x, w, strides, pads, dilations, group, output_padding):
    """Direct scatter: each input element adds its weighted kernel into the output."""
    n = x.ndim - 2
    N, C = x.shape[:2]
    mg = w.shape[1]
    K = w.shape[2:]
    cg = C // group
    full = [(x.shape[2 + i] - 1) * strides[i] + (K[i] - 1) * dilations[i] + 1 + output_padding[i]
            for i in range(n)]
    buf = np.zeros((N, mg * group, *full))
    for nb, c in itertools.product(range(N), range(C)):
        g = c // cg
        for i in itertools.product(*(range(v) for v in x.shape[2:])):
            for m in range(mg):
                for k in itertools.product(*(range(v) for v in K)):
                    pos = tuple(i[d] * strides[d] + k[d] * dilations[d] for d in range(n))
                    buf[(nb, g * mg + m) + pos] += x[(nb, c) + i] * w[(c, m) + k]
    crop = tuple(slice(pads[d], full[d] - pads[n + d]) for d in range(n))
    return buf[(slice(None), slice(None)) + crop]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.sampled_from([1, 2]), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1),
       st.integers(0, 2 ** 31 - 1))
def test_conv_transpose_matches_direct_scatter(n, group, stride, dilation, pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2 * group, *([3] * n))).astype(np.float32)
    w = rng.standard_normal((2 * group, 2, *([2] * n))).astype(np.float32)
    output_padding = [min(stride - 1, 1)] * n
    y = _run("nn.conv_transpose", x, w, strides=(stride,) * n, pads=(pad,) * (2 * n),
             dilations=(dilation,) * n, group=group, output_padding=tuple(output_padding))
    expected = naive_conv_transpose(x, w, [stride] * n, [pad] * (2 * n), [dilation] * n, group, output_padding)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


# -- pooling and friends ---------------------------------------------------------------------

def test_max_pool_indices_row_and_column_major():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y, idx = _run("nn.max_pool", x, kernel_shape=(2, 2), strides=(2, 2))
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(idx[0, 0], [[5, 7], [13, 15]])
    _, idx = _run("nn.max_pool", x, kernel_shape=(2, 2), strides=(2, 2), storage_order=1)
    np.testing.assert_array_equal(idx[0, 0], [[5, 13], [7, 15]])


def test_average_pool_count_include_pad():
    x = np.ones((1, 1, 2, 2), np.float32)
    excl = _run("nn.average_pool", x, kernel_shape=(2, 2), pads=(1, 1, 1, 1))
    incl = _run("nn.average_pool", x, kernel_shape=(2, 2), pads=(1, 1, 1, 1), count_include_pad=1)
    np.testing.assert_allclose(excl, np.ones((1, 1, 3, 3)))
    np.testing.assert_allclose(incl[0, 0], [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]])


def test_float16_in_float16_out():
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float16)
    w = np.ones((3, 2, 3, 3), np.float16)
    assert _run("nn.conv", x, w).dtype == np.float16
    assert _run("nn.softmax", x, axis=1).dtype == np.float16
    assert _run("nn.average_pool", x, kernel_shape=(2, 2)).dtype == np.float16


def test_softmax_is_stable_for_large_inputs():
    y = _run("nn.softmax", np.array([[1000.0, 1000.0, -np.inf]], np.float32), axis=1)
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0]])


# -- the ONNX converter ------------------------------------------------------------------------

def _model(node, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_softmax_before_opset_13_flattens_at_axis():
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])], 11)
    (y,) = qir.compile(model).run({"x": x}).values()
    flat = x.reshape(2, 12)
    expected = (np.exp(flat) / np.exp(flat).sum(1, keepdims=True)).reshape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_conv_auto_pad_resolved_to_explicit_pads_when_static():
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])
    w = np.ones((1, 1, 3, 3), np.float32)
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 11,
                   [onnx.numpy_helper.from_array(w, "w")])
    g = qir.load_onnx(model)
    conv = next(n for n in g.nodes if n.op == "nn.conv")
    assert conv.attrs["auto_pad"] == "NOTSET" and conv.attrs["pads"] == (1, 1, 0, 0)
    assert conv.output.type.shape == (1, 1, 3, 3)


def test_conv_auto_pad_kept_for_symbolic_input_and_run():
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")
    w = np.ones((1, 1, 2, 2), np.float32)
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 13,
                   [onnx.numpy_helper.from_array(w, "w")])
    m = qir.compile(model)
    x = np.ones((2, 1, 3, 3), np.float32)
    (y,) = m.run({"x": x}).values()
    np.testing.assert_allclose(y[0, 0], [[4, 4, 2], [4, 4, 2], [2, 2, 1]])


def _run_model(node, inputs: dict, opset: int, initializers=(), n_out: int = 1, symbolic=None):
    """Run a one-node ONNX model of ``opset`` through qir; ``symbolic`` names the input dims
    to leave unnamed-symbolic."""
    vis = []
    for name, arr in inputs.items():
        shape = list(arr.shape) if symbolic is None else [symbolic.get((name, i), d) for i, d in enumerate(arr.shape)]
        vis.append(helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output[:n_out]]
    graph = helper.make_graph([node], "g", vis, outs, [onnx.numpy_helper.from_array(v, k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return list(qir.compile(model).run(inputs).values())


def test_softmax_before_opset_13_with_symbolic_dims_uses_runtime_shape():
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    node = helper.make_node("LogSoftmax", ["x"], ["y"], axis=1)
    (y,) = _run_model(node, {"x": x}, 11, symbolic={("x", 0): "N"})
    flat = x.reshape(2, 12)
    expected = flat - np.log(np.exp(flat).sum(1, keepdims=True))
    np.testing.assert_allclose(y, expected.reshape(x.shape), rtol=1e-5, atol=1e-6)


def test_old_batch_norm_drops_legacy_attributes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    s, b, m = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    v = rng.uniform(0.5, 2, 3).astype(np.float32)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], is_test=1, spatial=1,
                            consumed_inputs=[0, 0, 0, 1, 1], epsilon=1e-3)
    (y,) = _run_model(node, {"x": x}, 1, [("s", s), ("b", b), ("m", m), ("v", v)])
    c = lambda a: a.reshape(1, 3, 1)  # noqa: E731
    np.testing.assert_allclose(y, (x - c(m)) / np.sqrt(c(v) + 1e-3) * c(s) + c(b), rtol=1e-5, atol=1e-6)


def test_old_dropout_is_identity_and_its_mask_has_x_type():
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    node = helper.make_node("Dropout", ["x"], ["y", "mask"], ratio=0.3)
    y, mask = _run_model(node, {"x": x}, 7, n_out=2)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.float32 and np.all(mask == 1)


def test_per_channel_prelu_before_opset_7():
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4)).astype(np.float32)
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    (y,) = _run_model(node, {"x": x}, 6, [("slope", slope)])
    np.testing.assert_allclose(y, np.where(x >= 0, x, x * slope.reshape(1, 3, 1, 1)))


def test_group_norm_opset_18_per_group_scale_becomes_per_channel():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    scale, bias = np.array([2.0, 3.0], np.float32), np.array([0.5, -1.0], np.float32)
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2, epsilon=1e-5)
    (y,) = _run_model(node, {"x": x}, 18, [("scale", scale), ("bias", bias)])
    xg = x.reshape(2, 2, 6)
    norm = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)).reshape(2, 2, 2, 3)
    expected = norm * scale.reshape(1, 2, 1, 1) + bias.reshape(1, 2, 1, 1)
    np.testing.assert_allclose(y, expected.reshape(x.shape), rtol=1e-5, atol=1e-5)


def test_lp_pool_opset_1_float_p_and_rnn_without_hidden_size():
    x = np.abs(np.random.default_rng(7).standard_normal((1, 1, 4, 4))).astype(np.float32)
    node = helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], p=3.0)
    (y,) = _run_model(node, {"x": x}, 1)
    expected = (x.reshape(1, 1, 2, 2, 2, 2) ** 3).sum(axis=(3, 5)) ** (1 / 3)
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    xs = np.ones((2, 1, 3), np.float32)
    w, r = np.full((1, 4, 3), 0.1, np.float32), np.zeros((1, 4, 4), np.float32)
    (y,) = _run_model(helper.make_node("RNN", ["x", "w", "r"], ["y"]), {"x": xs}, 14, [("w", w), ("r", r)])
    assert y.shape == (2, 1, 1, 4)  # [T, num_directions, B, H], H read from W
    np.testing.assert_allclose(y[1, 0, 0], np.tanh(np.full(4, 0.3)), rtol=1e-5)


def naive_pool(x, kernel, strides, pads, dilations, ceil_mode, kind, count_include_pad=0):
    """Direct-loop 2-D max/average pooling over [N, C, H, W], as ONNX defines it."""
    H, W = x.shape[2:]
    out = []
    for i in range(2):
        size = (H, W)[i]
        span = size + pads[i] + pads[2 + i] - (kernel[i] - 1) * dilations[i] - 1
        o = -(-span // strides[i]) + 1 if ceil_mode else span // strides[i] + 1
        if ceil_mode and (o - 1) * strides[i] >= size + pads[i]:
            o -= 1
        out.append(o)
    y = np.zeros(x.shape[:2] + tuple(out))
    for oh, ow in itertools.product(range(out[0]), range(out[1])):
        vals, count = [], 0
        for kh, kw in itertools.product(range(kernel[0]), range(kernel[1])):
            h = oh * strides[0] + kh * dilations[0] - pads[0]
            w = ow * strides[1] + kw * dilations[1] - pads[1]
            if 0 <= h < H and 0 <= w < W:
                vals.append(x[:, :, h, w])
                count += 1
            elif -pads[0] <= h < H + pads[2] and -pads[1] <= w < W + pads[3]:
                count += count_include_pad  # explicit padding (never ceil mode's extra cells)
        if kind == "max":
            y[:, :, oh, ow] = np.max(vals, axis=0)
        else:
            y[:, :, oh, ow] = np.sum(vals, axis=0) / (count if count_include_pad else len(vals))
    return y


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1),
       st.booleans(), st.sampled_from(["max", "avg", "avg_incl"]), st.integers(4, 7), st.integers(0, 2 ** 31 - 1))
# Dilated windows wider than the input: an empty output (floor((4 - 5) / s + 1) = 0), which the
# windowing once failed on; hypothesis reaches this corner only now and then.
@example(3, 1, 1, 2, 0, False, "avg_incl", 4, 0)
@example(3, 1, 3, 2, 0, False, "max", 4, 0)
@example(3, 1, 3, 2, 0, True, "avg", 4, 0)
def test_pooling_matches_direct_loop(kh, kw, stride, dilation, pad, ceil_mode, kind, size, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, size, size + 1)).astype(np.float32)
    pads = (min(pad, kh - 1), min(pad, kw - 1)) * 2  # ONNX: pads smaller than the kernel
    common = dict(kernel_shape=(kh, kw), strides=(stride, stride), pads=pads, dilations=(dilation, dilation),
                  ceil_mode=int(ceil_mode))
    if kind == "max":
        y = _run("nn.max_pool", x, **common)[0]
    else:
        y = _run("nn.average_pool", x, count_include_pad=int(kind == "avg_incl"), **common)
    expected = naive_pool(x, (kh, kw), (stride, stride), pads, (dilation, dilation), ceil_mode,
                          "max" if kind == "max" else "avg", int(kind == "avg_incl"))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_pool_window_wider_than_input_gives_empty_output_by_the_spec_floor():
    # Dilated kernel 3 spans 5 cells of a 4-long axis: ONNX's formula floor((4 - 5) / 3 + 1) = 0
    # output rows (onnx.reference agrees). onnxruntime and onnx's C++ shape inference truncate
    # -1 / 3 to 0 and report 1 row, reading past the input; qir follows the spec text.
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 5)).astype(np.float32)
    attrs = dict(kernel_shape=(3, 1), strides=(3, 3), dilations=(2, 2), pads=(0, 0, 0, 0))
    assert _run("nn.max_pool", x, **attrs)[0].shape == (1, 2, 0, 2)
    assert _run("nn.average_pool", x, **attrs).shape == (1, 2, 0, 2)
    assert _node("nn.max_pool", f32(1, 2, 4, 5), attrs=attrs)[0] == f32(1, 2, 0, 2)
    # In ceil mode the partial window counts: one row, the mean of the rows it covers.
    y = _run("nn.average_pool", x, ceil_mode=1, **attrs)
    np.testing.assert_allclose(y[:, :, 0, :], x[:, :, [0, 2], ::3].mean(axis=2), rtol=1e-6)


def test_old_softmax_over_one_wide_dim_needs_no_reshape():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 1, 1])
    model = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 9)])
    g = qir.load_onnx(model)
    assert [n.op for n in g.nodes] == ["nn.softmax"] and g.nodes[0].attrs["axis"] == 1
    data = np.random.default_rng(0).standard_normal((2, 5, 1, 1)).astype(np.float32)
    e = np.exp(data - data.max(axis=1, keepdims=True))
    np.testing.assert_allclose(qir.compile(model).run({"x": data})["y"], e / e.sum(axis=1, keepdims=True), rtol=1e-6)
