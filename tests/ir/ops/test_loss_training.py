"""Unit tests of the loss and training op families, and of the ops appended to the elementwise
and tensor families for the same conformance work (Shrink, BitCast, TensorScatter).

Kernels are checked against naive loops written from the ONNX spec's pseudo code; inference and
verification against hand-derived types; the converters through small ONNX models."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import qir
from qir.errors import QirError, ShapeInferenceError
from qir.ir.types import DType, TensorType
from tests.ir.ops.optest import f32, infer_node as _node, run_kernel as _run

TRAINING = "ai.onnx.preview.training"


def i64(*shape):
    return TensorType(DType.INT64, shape)


def _model(node, inputs, outputs, opsets):
    graph = helper.make_graph([node], "t", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


# -- negative log likelihood / softmax cross entropy -------------------------------------------

def _nll_naive(logp, target, weight, reduction, ignore_index):
    """The ONNX spec's loops: per-sample loss and weight, then the reduction."""
    n, c = logp.shape[:2]
    loss = np.zeros(target.shape, np.float64)
    wsum = 0.0
    for idx in itertools.product(*map(range, target.shape)):
        label = int(target[idx])
        if ignore_index is not None and label == ignore_index:
            continue
        w = 1.0 if weight is None else float(weight[label])
        loss[idx] = -float(logp[(idx[0], label) + idx[1:]]) * w
        wsum += w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / wsum


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.lists(st.integers(1, 3), max_size=3),
       st.sampled_from(["none", "sum", "mean"]), st.booleans(), st.sampled_from([None, 0, -1, 7]),
       st.integers(0, 2**31 - 1))
def test_nll_matches_spec_loops(n, c, dims, reduction, weighted, ignore_index, seed):
    rng = np.random.default_rng(seed)
    logp = rng.standard_normal((n, c, *dims)).astype(np.float32)
    target = rng.integers(0, c, (n, *dims)).astype(np.int64)
    if ignore_index is not None and target.size > 1:
        target.reshape(-1)[0] = ignore_index  # at least one sample ignored, even out of range
    weight = rng.uniform(0.1, 1.0, c).astype(np.float32) if weighted else None
    got = _run("loss.negative_log_likelihood_loss", logp, target, weight,
               reduction=reduction, ignore_index=ignore_index)
    want = _nll_naive(logp, target, weight, reduction, ignore_index)
    assert got.dtype == np.float32 and got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_nll_mean_of_only_ignored_samples_is_nan_and_bad_labels_raise():
    logp = np.zeros((2, 3), np.float32)
    out = _run("loss.negative_log_likelihood_loss", logp, np.array([1, 1]), ignore_index=1)
    assert np.isnan(out)
    with pytest.raises(ValueError, match="outside"):
        _run("loss.negative_log_likelihood_loss", logp, np.array([0, 3]))


def test_nll_float16_input_keeps_its_dtype():
    logp = np.log(np.full((2, 4, 3), 0.25, np.float16))
    out = _run("loss.negative_log_likelihood_loss", logp, np.zeros((2, 3), np.int64), reduction="sum")
    assert out.dtype == np.float16 and out.shape == ()
    assert float(out) == pytest.approx(6 * np.log(4), rel=1e-3)


def test_loss_inference_and_verification():
    out = _node("loss.negative_log_likelihood_loss", f32("N", 5, 7), i64("N", 7), attrs={"reduction": "none"})
    assert out == [f32("N", 7)]
    assert _node("loss.negative_log_likelihood_loss", f32("N", 5), i64("N")) == [f32()]
    # Unknown label shape: taken from the scores without the class axis.
    out = _node("loss.softmax_cross_entropy_loss", f32(2, 5, 3, 4), TensorType(DType.INT32, None),
                attrs={"reduction": "none"}, num_outputs=2)
    assert out == [f32(2, 3, 4), f32(2, 5, 3, 4)]
    with pytest.raises(ShapeInferenceError, match="reduction"):
        _node("loss.negative_log_likelihood_loss", f32(2, 3), i64(2), attrs={"reduction": "avg"})
    with pytest.raises(ShapeInferenceError, match="rank"):
        _node("loss.negative_log_likelihood_loss", f32(2, 3, 4), i64(2))
    with pytest.raises(ShapeInferenceError, match="integer"):
        _node("loss.softmax_cross_entropy_loss", f32(2, 3), f32(2))


def test_sce_is_nll_of_log_softmax_and_returns_log_prob():
    rng = np.random.default_rng(0)
    scores = (rng.standard_normal((3, 5, 2)) * 30).astype(np.float32)  # large: needs the stable form
    labels = rng.integers(0, 5, (3, 2))
    weights = rng.uniform(0.5, 2, 5).astype(np.float32)
    loss, log_prob = _run("loss.softmax_cross_entropy_loss", scores, labels, weights, ignore_index=2)
    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    want_lp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_prob, want_lp, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(log_prob))
    np.testing.assert_allclose(loss, _nll_naive(want_lp, labels, weights, "mean", 2), rtol=1e-5)


def test_loss_converters_from_onnx_models():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    t = rng.integers(0, 3, (2, 4)).astype(np.int64)
    for opset in (12, 13, 22):
        node = helper.make_node("NegativeLogLikelihoodLoss", ["x", "t"], ["y"], reduction="sum", ignore_index=1)
        model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
                              helper.make_tensor_value_info("t", TensorProto.INT64, [2, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [("", opset)])
        y = qir.compile(model, target="reference").run({"x": x, "t": t})["y"]
        np.testing.assert_allclose(y, _nll_naive(x, t, None, "sum", 1), rtol=1e-5)
    # SoftmaxCrossEntropyLoss with its optional second output, default reduction (mean).
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["y", "lp"])
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
                          helper.make_tensor_value_info("t", TensorProto.INT64, [2, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
                    helper.make_tensor_value_info("lp", TensorProto.FLOAT, [2, 3, 4])], [("", 13)])
    outs = qir.compile(model, target="reference").run({"x": x, "t": t})
    assert outs["y"].shape == () and outs["lp"].shape == (2, 3, 4)
    np.testing.assert_allclose(outs["y"], _nll_naive(outs["lp"], t, None, "mean", None), rtol=1e-5)


# -- training --------------------------------------------------------------------------------

def _tensors(rng, shapes, groups):
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(groups)]


@pytest.mark.parametrize("t", [0, 3])
def test_adagrad_multiple_tensors(t):
    rng = np.random.default_rng(2)
    xs, gs, hs = _tensors(rng, [(2,), (2, 3)], 3)
    hs = [np.abs(h) for h in hs]
    out = _run("training.adagrad", np.float32(0.1), np.int64(t), *xs, *gs, *hs,
               decay_factor=0.5, epsilon=1e-3, norm_coefficient=0.01)
    assert len(out) == 4
    r = 0.1 / (1 + t * 0.5)
    for k in range(2):
        g = 0.01 * xs[k] + gs[k]
        h = hs[k] + g * g
        np.testing.assert_allclose(out[k], xs[k] - r * g / (np.sqrt(h) + 1e-3), rtol=1e-5)
        np.testing.assert_allclose(out[2 + k], h, rtol=1e-5)
        assert out[k].dtype == np.float32


@pytest.mark.parametrize("t", [0, 2])
def test_adam_bias_correction_and_post_norm(t):
    rng = np.random.default_rng(3)
    (x,), (g,), (v,), (h,) = _tensors(rng, [(3,)], 4)
    h = np.abs(h)
    a, b = 0.9, 0.8
    x_new, v_new, h_new = _run("training.adam", np.array(0.05, np.float32), np.array(t), x, g, v, h,
                               alpha=a, beta=b, epsilon=1e-4, norm_coefficient=0.1,
                               norm_coefficient_post=0.2)
    gr = 0.1 * x + g
    v2 = a * v + (1 - a) * gr
    h2 = b * h + (1 - b) * gr * gr
    r = 0.05 * np.sqrt(1 - b**t) / (1 - a**t) if t > 0 else 0.05
    np.testing.assert_allclose(x_new, 0.8 * (x - r * v2 / (np.sqrt(h2) + 1e-4)), rtol=1e-5)
    np.testing.assert_allclose(v_new, v2, rtol=1e-5)
    np.testing.assert_allclose(h_new, h2, rtol=1e-5)


@pytest.mark.parametrize("mode", ["standard", "nesterov"])
@pytest.mark.parametrize("t", [0, 1])
def test_momentum_modes(mode, t):
    rng = np.random.default_rng(4)
    xs, gs, vs = _tensors(rng, [(2,), (1, 4)], 3)
    out = _run("training.momentum", np.float32(0.1), np.int64(t), *xs, *gs, *vs,
               alpha=0.9, beta=0.5, mode=mode, norm_coefficient=0.01)
    beta = 0.5 if t > 0 else 1.0
    for k in range(2):
        g = 0.01 * xs[k] + gs[k]
        v = 0.9 * vs[k] + beta * g
        step = v if mode == "standard" else g + 0.9 * v
        np.testing.assert_allclose(out[k], xs[k] - 0.1 * step, rtol=1e-5)
        np.testing.assert_allclose(out[2 + k], v, rtol=1e-5)


def test_training_inference_orders_outputs_and_checks_groups():
    scalar = TensorType(DType.FLOAT32, ())
    t = TensorType(DType.INT64, ())
    x1, x2 = f32(2), TensorType(DType.FLOAT64, ("N", 3))
    out = _node("training.adam", scalar, t, x1, x2, x1, x2, x1, x2, x1, x2, num_outputs=6)
    assert out == [x1, x2] * 3
    with pytest.raises(ShapeInferenceError, match="groups"):
        _node("training.adagrad", scalar, t, x1, x1, num_outputs=2)
    with pytest.raises(ShapeInferenceError, match="differs"):
        _node("training.adagrad", scalar, t, f32(2), f32(3), f32(2), num_outputs=2)
    with pytest.raises(ShapeInferenceError, match="mode"):
        _node("training.momentum", scalar, t, x1, x1, x1, num_outputs=2,
              attrs={"alpha": 0.9, "beta": 1.0, "mode": "heavy", "norm_coefficient": 0.0})


def test_training_converter_uses_preview_domain():
    node = helper.make_node("Momentum", ["R", "T", "X", "G", "V"], ["X_new", "V_new"], domain=TRAINING,
                            alpha=0.9, beta=0.1, mode="nesterov", norm_coefficient=0.0)
    vi = [helper.make_tensor_value_info("R", TensorProto.FLOAT, []),
          helper.make_tensor_value_info("T", TensorProto.INT64, [])]
    vi += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "XGV"]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("X_new", "V_new")]
    model = _model(node, vi, outs, [("", 17), (TRAINING, 1)])
    graph = qir.load_onnx(model)
    assert [n.op for n in graph.nodes] == ["training.momentum"]
    feeds = {"R": np.float32(0.1), "T": np.int64(0), "X": np.ones(2, np.float32),
             "G": np.ones(2, np.float32), "V": np.zeros(2, np.float32)}
    res = qir.compile(model, target="reference").run(feeds)
    np.testing.assert_allclose(res["V_new"], [1, 1])
    np.testing.assert_allclose(res["X_new"], 1 - 0.1 * (1 + 0.9))


# -- shrink, bit_cast --------------------------------------------------------------------------

def test_shrink_floats_and_ints():
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], np.float32)
    np.testing.assert_allclose(_run("elementwise.shrink", x, bias=1.5, lambd=0.5),
                               [-0.5, 0.5, 0, 0, 0, -0.5, 0.5])
    xi = np.arange(-3, 4, dtype=np.int8)
    out = _run("elementwise.shrink", xi, bias=1.0, lambd=1.5)
    assert out.dtype == np.int8 and out.tolist() == [-2, -1, 0, 0, 0, 1, 2]


def test_bit_cast_reinterprets_bits():
    x = np.array([[1.0, -2.5]], np.float32)
    out = _run("elementwise.bit_cast", x, to=DType.INT32)
    assert out.dtype == np.int32 and out.shape == (1, 2) and out[0, 0] == 0x3F800000
    assert _run("elementwise.bit_cast", np.array(1.0, np.float32), to=DType.UINT32).shape == ()
    np.testing.assert_array_equal(_run("elementwise.bit_cast", out, to=DType.FLOAT32), x)
    # Sub-byte types keep only their own bits; bytes become bools by "nonzero".
    nib = np.array([-1, 7, -8], ml_dtypes.int4)
    assert _run("elementwise.bit_cast", nib, to=DType.UINT4).astype(np.int64).tolist() == [15, 7, 8]
    assert _run("elementwise.bit_cast", np.array([0, 1, 2], np.uint8), to=DType.BOOL).tolist() == [False, True, True]
    half = np.array([1.0], ml_dtypes.bfloat16)
    assert _run("elementwise.bit_cast", half, to=DType.INT16).tolist() == [0x3F80]


def test_bit_cast_refuses_other_widths():
    with pytest.raises(ShapeInferenceError, match="bit width"):
        _node("elementwise.bit_cast", f32(2), attrs={"to": DType.INT64})
    with pytest.raises(ShapeInferenceError, match="strings"):
        _node("elementwise.bit_cast", TensorType(DType.STRING, (1,)), attrs={"to": DType.INT64})
    assert _node("elementwise.bit_cast", f32("N"), attrs={"to": DType.UINT32}) == [TensorType(DType.UINT32, ("N",))]


# -- tensor_scatter --------------------------------------------------------------------------

def _scatter_naive(past, update, write_indices, mode, axis):
    """The ONNX spec's pseudo code."""
    out = past.copy()
    axis %= past.ndim
    for prefix in np.ndindex(past.shape[:axis]):
        for s in range(update.shape[axis]):
            pos = write_indices[prefix[0]] + s
            if mode == "circular":
                pos %= past.shape[axis]
            out[(*prefix, pos)] = update[(*prefix, s)]
    return out


@pytest.mark.parametrize("axis", [1, 2, -1, -2])
@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter_matches_spec(axis, mode):
    rng = np.random.default_rng(5)
    past = rng.standard_normal((2, 3, 6, 4)).astype(np.float32)
    shape = list(past.shape)
    shape[axis] = 2
    update = rng.standard_normal(shape).astype(np.float32)
    length = past.shape[axis]
    wi = np.array([0, length - 1 if mode == "circular" else length - 2], np.int64)
    out = _run("tensor.tensor_scatter", past, update, wi, mode=mode, axis=axis)
    np.testing.assert_array_equal(out, _scatter_naive(past, update, wi, mode, axis))
    assert not np.shares_memory(out, past)


def test_tensor_scatter_defaults_and_errors():
    past = np.zeros((2, 5, 3), np.int32)
    update = np.ones((2, 2, 3), np.int32)
    out = _run("tensor.tensor_scatter", past, update)  # write_indices default 0, axis -2
    assert out[:, :2].all() and not out[:, 2:].any()
    with pytest.raises(ValueError, match="overruns"):
        _run("tensor.tensor_scatter", past, update, np.array([0, 4]))
    with pytest.raises(ValueError, match="batch axis"):
        _run("tensor.tensor_scatter", past, update, axis=0)
    with pytest.raises(ShapeInferenceError, match="does not fit"):
        _node("tensor.tensor_scatter", f32("B", 4, 8), f32("B", 5, 8))
    assert _node("tensor.tensor_scatter", f32("B", 4, 8), f32("B", 1, 8)) == [f32("B", 4, 8)]


def test_tensor_scatter_converter_makes_axis_explicit():
    node = helper.make_node("TensorScatter", ["p", "u", "w"], ["y"], mode="circular")
    model = _model(node, [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 2, 4, 3]),
                          helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 2, 3, 3]),
                          helper.make_tensor_value_info("w", TensorProto.INT64, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 3])], [("", 24)])
    graph = qir.load_onnx(model)
    assert graph.nodes[0].attrs["axis"] == 2
    p = np.zeros((1, 2, 4, 3), np.float32)
    u = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)
    y = qir.compile(model, target="reference").run({"p": p, "u": u, "w": np.array([3])})["y"]
    np.testing.assert_array_equal(y, _scatter_naive(p, u, [3], "circular", 2))


def test_unknown_ops_still_reported():
    # Gradient needs autodiff: it stays unsupported, with a clear error.
    node = helper.make_node("Gradient", ["x"], ["dx"], domain=TRAINING, xs=["x"], y="x")
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                   [helper.make_tensor_value_info("dx", TensorProto.FLOAT, [1])], [("", 17), (TRAINING, 1)])
    with pytest.raises(QirError, match="Gradient"):
        qir.load_onnx(model)
