"""The TensorFlow frontend against TensorFlow itself: Keras models, a SavedModel directory, a
.keras file, a frozen .pb GraphDef and tf.functions of raw ops, each compared with TF's own
outputs (float32; rtol 1e-4, atol 1e-5 unless a test says otherwise), verified, round-tripped
through the text form and run through -O2 (outputs kept). Bad input: unsupported ops are all
listed in one error; tf.while_loop / tf.cond are refused with a clear message."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow", reason="TensorFlow cannot be imported (pip install qir[tf])")

import qir.passes  # noqa: E402
from qir.errors import ModelLoadError, OptionError, QirError, UnsupportedOpError  # noqa: E402
from qir.frontends.tensorflow import load_tensorflow  # noqa: E402
from qir.ir.interpreter import Interpreter  # noqa: E402
from qir.ir.parser import parse_graph  # noqa: E402
from qir.ir.printer import print_graph  # noqa: E402
from qir.ir.verifier import verify  # noqa: E402

L = tf.keras.layers
RTOL, ATOL = 1e-4, 1e-5


def _run(graph, feeds):
    return Interpreter(graph).run(feeds)


def _close(got, want, rtol=RTOL, atol=ATOL):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def _roundtrip(graph):
    weights: dict = {}
    text = print_graph(graph, weights)
    parsed = parse_graph(text, weights)
    assert print_graph(parsed, weights) == text
    verify(parsed)
    return parsed


def check(graph, feeds, want, rtol=RTOL, atol=ATOL):
    """Verified; outputs match TF's as imported, after a text round trip, and after -O2."""
    verify(graph)
    _close(_run(graph, feeds), want, rtol, atol)
    _close(_run(_roundtrip(graph), feeds), want, rtol, atol)
    optimized = qir.passes.run(graph.copy(), opt_level=2)
    verify(optimized)
    _close(_run(optimized, feeds), want, rtol, atol)
    return optimized


def transposes(graph) -> int:
    return sum(n.op == "tensor.transpose" for n in graph.walk())


# -- Keras ---------------------------------------------------------------------------------

def keras_cnn():
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(max_value=6.0)(x)
    x = L.Conv2D(12, 1, padding="valid", activation="relu", name="pw")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(10, name="fc")(x)
    out = L.Softmax(name="probs")(x)
    model = tf.keras.Model(inp, out, name="cnn")
    rng = np.random.default_rng(1)
    for bn in (model.get_layer("bn1"), model.get_layer("bn2")):  # non-trivial inference statistics
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.5, c),
                        rng.uniform(0.5, 2.0, c)])
    return model


def test_keras_cnn_matches_keras_and_transposes_cancel():
    model = keras_cnn()
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    graph = load_tensorflow(model)
    assert [v.name for v in graph.inputs] == ["image"] and [v.name for v in graph.outputs] == ["probs"]
    assert graph.inputs[0].type.shape == ("N", 16, 16, 3)
    assert graph.outputs[0].type.shape == ("N", 10)
    ops = {n.op for n in graph.nodes}
    assert {"nn.conv", "nn.max_pool", "linalg.matmul", "nn.softmax"} <= ops
    assert any(n.op == "nn.conv" and n.attrs["group"] == 8 for n in graph.nodes)  # depthwise
    assert all(n.provenance for n in graph.nodes)  # every node maps back to a TF op
    optimized = check(graph, {"image": x}, [want])
    # NHWC layers become transpose → NCHW op → transpose: 4 spatial layers, 8 transposes as
    # imported. -O2 composes only adjacent pairs (pool → conv); cancel-transposes also pushes
    # them through the BN/ReLU math between layers, leaving the input's and the one before the
    # global average pool (a reduce.mean over NHWC axes, which it does not move through).
    assert transposes(graph) == 8
    assert transposes(optimized) <= 6
    cancelled = qir.passes.run(graph.copy(), ["cancel-transposes"] + qir.passes.pipelines.standard_pipeline(3))
    assert transposes(cancelled) <= 2
    assert {n.op for n in cancelled.nodes} >= {"fused.conv"}  # BN folded, activations fused
    _close(_run(cancelled, {"image": x}), [want])


def test_keras_mlp_file_and_fixed_shapes(tmp_path):
    tf.keras.utils.set_random_seed(2)
    inp = tf.keras.Input((4, 4, 2), name="feats")
    x = L.Flatten()(inp)
    x = L.Dense(16, activation="relu")(x)
    x = L.LayerNormalization()(x)
    x = L.Dense(8, activation="tanh")(x)
    x = L.Dense(8, activation="gelu")(x)  # Keras writes erf-GELU with Erfc
    x = L.Dropout(0.5)(x)
    out = L.Dense(3, activation="sigmoid", name="scores")(x)
    model = tf.keras.Model(inp, out)
    x = np.random.default_rng(3).standard_normal((5, 4, 4, 2)).astype(np.float32)
    want = model(x, training=False).numpy()
    graph = load_tensorflow(model)  # the batch dim stays symbolic
    assert graph.inputs[0].type.shape == ("N", 4, 4, 2) and graph.outputs[0].type.shape == ("N", 3)
    assert "tensor.shape" not in {n.op for n in graph.nodes}  # Flatten's [batch, -1] became [-1, 32]
    check(graph, {"feats": x}, [want])
    path = tmp_path / "mlp.keras"
    model.save(path)
    fixed = load_tensorflow(str(path), input_shapes={"feats": (5, 4, 4, 2)})
    assert fixed.inputs[0].type.shape == (5, 4, 4, 2) and fixed.outputs[0].type.shape == (5, 3)
    assert "tensor.shape" not in {n.op for n in fixed.nodes}  # static shapes fold at import
    check(fixed, {"feats": x}, [want])
    with pytest.raises(OptionError, match="feats"):
        load_tensorflow(model, input_shapes={"feats": (5, 4, 4, 3)})


def test_saved_model_directory(tmp_path):
    tf.keras.utils.set_random_seed(4)
    inp = tf.keras.Input((6,), name="features")
    out = L.Dense(4, activation="elu")(L.Dense(8, activation="relu")(inp))
    model = tf.keras.Model(inp, out)
    model.export(str(tmp_path / "sm"), verbose=False)
    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    want = model(x, training=False).numpy()
    graph = load_tensorflow(str(tmp_path / "sm"))
    assert [v.name for v in graph.inputs] == ["features"] and [v.name for v in graph.outputs] == ["output_0"]
    check(graph, {"features": x}, [want])
    with pytest.raises(ModelLoadError, match="no signature 'nope'"):
        load_tensorflow(str(tmp_path / "sm"), signature="nope")


def test_conv_transpose_and_avg_pool():
    tf.keras.utils.set_random_seed(6)
    inp = tf.keras.Input((5, 5, 3), name="img")
    y = L.Conv2DTranspose(4, 3, strides=2, padding="same")(inp)
    y2 = L.Conv2DTranspose(2, 3, strides=2, padding="valid", name="up")(y)
    y3 = L.AveragePooling2D(3, strides=2, padding="same", name="pool")(y2)
    model = tf.keras.Model(inp, [y2, y3])
    x = np.random.default_rng(7).standard_normal((1, 5, 5, 3)).astype(np.float32)
    want = [t.numpy() for t in model(x)]
    graph = load_tensorflow(model)
    assert [v.name for v in graph.outputs] == ["up", "pool"]
    check(graph, {"img": x}, want)


def test_keras_branches_grouped_and_dilated_convs():
    """Two inputs, a residual Add and a Concatenate (fan-out), a grouped conv (Keras runs it in
    a jit-compiled function call, inlined here), a dilated SAME conv (TF writes it as
    SpaceToBatchND → Conv2D → BatchToSpaceND), ZeroPadding, both UpSampling modes, a separable
    conv, Reshape/Permute and global max pooling."""
    tf.keras.utils.set_random_seed(11)
    a, b = tf.keras.Input((8, 8, 4), name="a"), tf.keras.Input((8, 8, 4), name="b")
    x = L.Conv2D(8, 3, strides=2, padding="same")(a)
    x = L.ZeroPadding2D(((1, 0), (0, 1)))(x)
    x = L.Conv2D(8, 2, groups=2)(x)
    s = L.Add()([x, L.Conv2D(8, 1, strides=2)(b)])
    c = L.Concatenate()([L.UpSampling2D(2)(s), L.UpSampling2D(2, interpolation="bilinear")(s), a, b])
    c = L.SeparableConv2D(5, 3, padding="same", activation="swish")(c)
    c = L.Conv2D(4, 3, padding="same", dilation_rate=2, activation="hard_sigmoid")(c)
    p = L.Permute((2, 1), name="perm")(L.Reshape((16, 16))(c))
    model = tf.keras.Model([a, b], [p, L.GlobalMaxPooling2D(name="gmax")(L.Reshape((4, 4, 16))(p))])
    rng = np.random.default_rng(12)
    feeds = {"a": rng.standard_normal((2, 8, 8, 4)).astype(np.float32),
             "b": rng.standard_normal((2, 8, 8, 4)).astype(np.float32)}
    want = [t.numpy() for t in model([feeds["a"], feeds["b"]])]
    graph = load_tensorflow(model)
    assert [v.name for v in graph.outputs] == ["perm", "gmax"]
    assert any(n.op == "nn.conv" and n.attrs["group"] == 2 for n in graph.nodes)
    assert any("StatefulPartitionedCall/" in n.name for n in graph.nodes)  # the inlined call
    check(graph, feeds, want)


# -- tf.functions of raw ops ---------------------------------------------------------------

@tf.function(input_signature=[tf.TensorSpec([2, 5, 6, 3], tf.float32, name="x"),
                              tf.TensorSpec([4, 6], tf.float32, name="y")])
def slicing(x, y):
    return (
        x[:, 1:4, ::-2, :],                       # begin/end masks, negative stride
        x[..., 1],                                # ellipsis + shrink
        x[1, tf.newaxis, :, -1],                  # shrink, new axis, negative index
        y[-1:, 2:-1],
        tf.concat([tf.pad(y, [[1, 0], [2, 3]]), tf.pad(y, [[1, 0], [2, 1]], mode="REFLECT")], axis=-1),
        tf.pad(y, [[0, 1], [1, 0]], constant_values=2.5),  # PadV2
        tf.slice(y, [1, 2], [-1, 3]),
        tf.stack([y, y * 2.0], axis=1),
        tf.unstack(x, axis=2)[4],
        tf.split(y, [2, -1, 1], axis=1)[1],
        tf.gather(y, [3, 0, 0], axis=0),
        tf.tile(y[:1], [2, 1]),
        tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [2, -1]),
        tf.reduce_mean(x, axis=[1, 2], keepdims=True) + tf.reduce_sum(x, axis=-1, keepdims=True)
        - tf.reduce_max(x, axis=0),
        tf.fill([2, 3], 1.5) + tf.cast(tf.range(3), tf.float32),
        tf.squeeze(tf.expand_dims(y, 0), 0) * tf.math.rsqrt(tf.square(y) + 1.0)
        + tf.math.squared_difference(y, 1.0) + tf.math.erf(y) + tf.maximum(y, 0.2) / tf.exp(tf.minimum(y, 0.5)),
        tf.reverse(y, axis=[1]),
        tf.nn.gelu(y, approximate=True) + tf.nn.selu(y) + tf.nn.softplus(y) + tf.abs(y) ** 1.5,
        tf.image.resize(x, [7, 9], method="bilinear"),                       # half-pixel centers
        tf.image.resize(x, [11, 4], method="nearest"),
        tf.compat.v1.image.resize_bilinear(x, [7, 9], align_corners=True),
        tf.compat.v1.image.resize_nearest_neighbor(x, [9, 13], align_corners=True),
        tf.compat.v1.image.resize_nearest_neighbor(x, [9, 13]),              # legacy
        tf.compat.v1.image.resize_bilinear(x, [3, 4]),                       # legacy
    )


def test_tf_function_slicing_padding_concat():
    rng = np.random.default_rng(8)
    feeds = {"x": rng.standard_normal((2, 5, 6, 3)).astype(np.float32),
             "y": rng.standard_normal((4, 6)).astype(np.float32)}
    want = [t.numpy() for t in slicing(feeds["x"], feeds["y"])]
    graph = load_tensorflow(slicing)
    assert [v.name for v in graph.inputs] == ["x", "y"]
    assert [v.name for v in graph.outputs] == [f"output_{i}" for i in range(len(want))]
    check(graph, feeds, want)


_RNG = np.random.default_rng(9)
_W = _RNG.standard_normal((3, 3, 4, 6)).astype(np.float32) * 0.3
_WD = _RNG.standard_normal((3, 3, 6, 2)).astype(np.float32) * 0.3
_BN = [_RNG.uniform(0.5, 1.5, 12), _RNG.standard_normal(12), _RNG.standard_normal(12) * 0.1, _RNG.uniform(0.5, 2, 12)]
_BN = [b.astype(np.float32) for b in _BN]
_WM = _RNG.standard_normal((5, 12)).astype(np.float32)


@tf.function(input_signature=[tf.TensorSpec([2, 9, 9, 4], tf.float32, name="x"),
                              tf.TensorSpec([2, 3, 5], tf.float32, name="z")])
def raw_ops(x, z):
    c = tf.nn.relu6(tf.nn.bias_add(tf.nn.conv2d(x, _W, strides=2, padding="SAME"), np.arange(6, dtype=np.float32)))
    d = tf.nn.depthwise_conv2d(c, _WD, strides=[1, 1, 1, 1], padding="VALID")
    d, _, _ = tf.compat.v1.nn.fused_batch_norm(d, *_BN, epsilon=1e-3, is_training=False)  # FusedBatchNormV3
    d = tf.nn.leaky_relu(d, 0.1)
    zz = tf.matmul(z, _WM)
    return (tf.nn.max_pool2d(d, 2, 1, "SAME") + tf.nn.avg_pool2d(tf.nn.elu(d), 2, 1, "SAME"),
            tf.nn.conv2d(x, _W, strides=1, padding="VALID", dilations=2),
            tf.nn.conv2d(x, _W, strides=1, padding=[[0, 0], [1, 2], [0, 1], [0, 0]]),  # explicit
            tf.matmul(z, z, transpose_b=True),
            tf.matmul(z[0], _WM.T, transpose_b=True),
            tf.einsum("bij,jk->bik", z, _WM),
            tf.argmax(zz, axis=-1),
            tf.nn.softmax(zz) + tf.nn.log_softmax(zz, axis=-1) + tf.sigmoid(zz) * tf.tanh(zz))


def test_tf_function_raw_ops_and_frozen_pb(tmp_path):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    rng = np.random.default_rng(10)
    feeds = {"x": rng.standard_normal((2, 9, 9, 4)).astype(np.float32),
             "z": rng.standard_normal((2, 3, 5)).astype(np.float32)}
    want = [t.numpy() for t in raw_ops(feeds["x"], feeds["z"])]
    graph = load_tensorflow(raw_ops.get_concrete_function())
    ops = {n.op for n in graph.nodes}
    assert {"nn.conv", "nn.batch_normalization", "nn.max_pool", "nn.average_pool", "linalg.einsum"} <= ops
    check(graph, feeds, want)
    frozen = convert_variables_to_constants_v2(raw_ops.get_concrete_function())
    tf.io.write_graph(frozen.graph.as_graph_def(), str(tmp_path), "raw.pb", as_text=False)
    from_pb = load_tensorflow(str(tmp_path / "raw.pb"))  # outputs: the tensors no op reads
    assert [v.name for v in from_pb.inputs] == ["x", "z"] and len(from_pb.outputs) == len(want)
    _close(_run(from_pb, feeds), want)


def test_input_shapes_untraced_functions_and_dynamic_spatial_dims():
    @tf.function
    def scale(x):
        return tf.nn.relu(x) * 2.0

    with pytest.raises(ModelLoadError, match="input_shapes"):
        load_tensorflow(scale)
    graph = load_tensorflow(scale, input_shapes={"x": (3,)})  # traced with float32 inputs
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    _close(_run(graph, {"x": x}), [scale(x).numpy()])

    class Subclassed(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, inputs):
            return self.dense(inputs) * 2.0

    tf.keras.utils.set_random_seed(13)
    sub = Subclassed()
    with pytest.raises(ModelLoadError, match="no defined inputs"):
        load_tensorflow(sub)
    x = np.random.default_rng(14).standard_normal((2, 5)).astype(np.float32)
    graph = load_tensorflow(sub, input_shapes=[(2, 5)])
    check(graph, {"input_0": x}, [sub(x).numpy()])

    # unknown spatial dims: SAME padding stays auto_pad=SAME_UPPER, resolved when the graph runs
    inp = tf.keras.Input((None, None, 3), name="img")
    y = L.MaxPooling2D(3, strides=2, padding="same")(L.Conv2D(4, 3, strides=2, padding="same")(inp))
    model = tf.keras.Model(inp, L.GlobalAveragePooling2D()(y))
    graph = load_tensorflow(model)
    assert graph.inputs[0].type.shape == ("N", "img_d1", "img_d2", 3)
    assert {n.attrs.get("auto_pad") for n in graph.nodes if n.op in ("nn.conv", "nn.max_pool")} == {"SAME_UPPER"}
    x = np.random.default_rng(15).standard_normal((1, 11, 7, 3)).astype(np.float32)
    check(graph, {"img": x}, [model(x).numpy()])


# -- bad input -----------------------------------------------------------------------------

def test_unsupported_ops_reported_at_once():
    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def spectral(x):
        return (tf.math.real(tf.signal.fft(tf.cast(x, tf.complex64)))
                + tf.math.bessel_i0e(x) + tf.math.bessel_i0e(2.0 * x))

    with pytest.raises(UnsupportedOpError) as err:
        load_tensorflow(spectral)
    message = str(err.value)
    assert "3 unsupported TensorFlow op type(s)" in message
    assert "FFT ×1" in message and "Real ×1" in message and "BesselI0e ×2" in message
    assert "bessel_i0e/BesselI0e" in message  # node names


def test_control_flow_is_refused_clearly():
    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
    def loop(x):
        return tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 2.0), [tf.constant(0), x])[1]

    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
    def branch(x):
        return tf.cond(tf.reduce_sum(x) > 0, lambda: x * 2.0, lambda: x - 1.0)

    with pytest.raises(QirError, match=r"(?s)While ×1.*control flow.*tf.while_loop"):
        load_tensorflow(loop)
    with pytest.raises(QirError, match=r"(?s)If ×1.*control flow"):
        load_tensorflow(branch)


def test_bad_paths_and_objects(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_tensorflow(str(tmp_path / "missing"))
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\x00not a graph\xff" * 8)
    with pytest.raises(ModelLoadError, match="junk.pb"):
        load_tensorflow(str(junk))
    with pytest.raises(ModelLoadError, match="cannot load a int"):
        load_tensorflow(42)
