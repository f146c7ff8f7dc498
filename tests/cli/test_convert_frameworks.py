"""qirc convert and qir.compile on PyTorch (.pt2, nn.Module), TensorFlow (SavedModel directory,
.keras) and TFLite files: the same commands as for ONNX, outputs equal to the framework's."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import qir
from qir.cli.main import cli
from qir.ir import serialize

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def qirc(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _run(graph, x):
    return next(iter(qir.compile(graph).run({graph.inputs[0].name: x}).values()))


def test_torch_pt2_and_module(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    want = net(x).detach().numpy()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(path))
    out = tmp_path / "net.qir"
    assert "wrote" in qirc("convert", path, "-o", out).output
    np.testing.assert_allclose(_run(serialize.load(out), x.numpy()), want, rtol=1e-4, atol=1e-5)
    m = qir.compile(net, example_inputs=(x,))
    np.testing.assert_allclose(next(iter(m.run({m.inputs[0].name: x.numpy()}).values())), want,
                               rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def keras_model():
    tf = pytest.importorskip("tensorflow")
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(4, 3, padding="same"),
                                 tf.keras.layers.ReLU(), tf.keras.layers.GlobalAveragePooling2D(),
                                 tf.keras.layers.Dense(2)])
    return tf, model


def test_tensorflow_saved_model_directory(tmp_path, keras_model):
    tf, model = keras_model
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32)
    want = model(x).numpy()
    saved = tmp_path / "saved"
    model.export(str(saved))
    out = tmp_path / "m.qirb"
    qirc("convert", saved, "-o", out)
    np.testing.assert_allclose(_run(serialize.load(out), x), want, rtol=1e-4, atol=1e-5)


def test_tflite_file(tmp_path, keras_model):
    tf, model = keras_model
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 3)).astype(np.float32)
    path = tmp_path / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    want = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    out = tmp_path / "m.qir"
    qirc("convert", path, "-o", out)
    np.testing.assert_allclose(_run(serialize.load(out), x), want, rtol=1e-4, atol=1e-5)
    m = qir.compile(str(path))
    np.testing.assert_allclose(next(iter(m.run({m.inputs[0].name: x}).values())), want,
                               rtol=1e-4, atol=1e-5)
