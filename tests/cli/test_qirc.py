"""qirc end to end: inspect, convert, run, aliases, and errors (one or two lines, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import qir
from qir.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([1.0, -2.0, 0.5], np.float32)


@pytest.fixture
def tiny(tmp_path) -> Path:
    """y = x @ W + B with a symbolic batch dim N."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm"),
         helper.make_node("Add", ["xw", "B"], ["y"], name="add")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def qirc(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_version_and_help_show_canonical_flags():
    assert qirc("--version").output.strip() == f"qirc {qir.__version__}"
    help_text = qirc("convert", "--help").output
    assert "--input-dim" in help_text
    assert "--input_dim" not in help_text and "-d," not in help_text and "input_network" not in help_text


def test_inspect_table(tiny):
    out = qirc("inspect", tiny).output
    assert "linalg.matmul" in out and "elementwise.add" in out
    assert "parameters: 15" in out
    assert "f32[N,4]" in out and "per N=1" in out


def test_inspect_json_with_input_dims_and_qnn_aliases(tiny):
    for args in (["inspect", tiny, "--input-dim", "x", "2,4"],
                 ["inspect", "-i", tiny, "-d", "x", "2,4"],
                 ["inspect", "--input_network", tiny, "--input_dim", "x", "2,4"]):
        data = json.loads(qirc(*args, "--json").output)
        assert data["macs"] == 2 * 3 * 4
        assert data["flops"] == 2 * 2 * 3 * 4 + 2 * 3
        assert data["params"] == 15 and data["param_bytes"] == 60
        assert data["assumed_symbols"] == {}
        assert data["inputs"] == [{"name": "x", "type": "f32[2,4]"}]
        assert data["outputs"] == [{"name": "y", "type": "f32[2,3]"}]


@pytest.mark.parametrize("suffix", [".qir", ".qirb", ".onnx"])
def test_convert_round_trips_and_runs(tiny, tmp_path, suffix):
    out = tmp_path / f"model{suffix}"
    assert "wrote" in qirc("convert", tiny, "-o", out, "-d", "x", "2,4").output
    assert out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp left behind
    data = json.loads(qirc("inspect", out, "--json").output)
    assert data["inputs"] == [{"name": "x", "type": "f32[2,4]"}]
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(qir.compile(str(out)).run({"x": x})["y"], x @ W + B, rtol=1e-6)


def test_run_writes_outputs(tiny, tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = qirc("run", tiny, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "out",
                  "--num-threads", "2")
    assert "y: float32[5, 3]" in result.output
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), x @ W + B, rtol=1e-5)
    # With one input, NAME= may be left out.
    assert "y: float32[5, 3]" in qirc("run", tiny, "--input", tmp_path / "x.npy").output


def _error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("qirc: error: "), result.stderr
    assert "Traceback" not in result.output
    return result.stderr


def test_user_errors_are_one_or_two_lines(tiny, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    assert "bad.onnx" in _error(qirc("inspect", bad, ok=False))
    assert "no such model file" in _error(qirc("inspect", tmp_path / "missing.onnx", ok=False))
    assert "integers" in _error(qirc("inspect", tiny, "-d", "x", "a,b", ok=False))
    assert "names no input" in _error(qirc("convert", tiny, "-o", tmp_path / "o.qirb",
                                           "-d", "nope", "1,4", ok=False))
    assert "output format" in _error(qirc("convert", tiny, "-o", tmp_path / "o.txt", ok=False))
    np.save(tmp_path / "bad.npy", np.ones((2, 5), np.float32))
    assert "dim 1" in _error(qirc("run", tiny, "--input", f"x={tmp_path / 'bad.npy'}", ok=False))
    assert not (tmp_path / "o.qirb").exists()


def test_usage_errors_exit_2(tiny):
    assert qirc("inspect", ok=False).exit_code == 2  # no MODEL
    assert qirc("inspect", tiny, "--bogus", ok=False).exit_code == 2


def test_debug_raises_the_original_exception(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    result = qirc("--debug", "inspect", bad, ok=False)
    assert isinstance(result.exception, qir.QirError)


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qir.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_subprocess_bad_file_is_one_error_line(tmp_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes((DIGITS / "digits.onnx").read_bytes()[:1000])
    proc = _subprocess("inspect", bad)
    assert proc.returncode == 1
    assert proc.stderr.startswith("qirc: error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2
    assert proc.stdout == ""


def test_subprocess_unknown_option_is_a_usage_error():
    proc = _subprocess("convert", "--no-such-flag")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr and "Traceback" not in proc.stderr


# -- the bundled digits model --------------------------------------------------------------

def test_digits_inspect_counts():
    data = json.loads(qirc("inspect", DIGITS / "digits.onnx", "--json").output)
    assert data["ops"]["nn.conv"]["count"] == 2 and data["ops"]["linalg.gemm"]["count"] == 2
    # per sample: conv1 16·8·8·1·9, conv2 32·4·4·16·9, fc1 64·128, fc2 10·64
    assert data["macs"] == 9216 + 73728 + 8192 + 640
    assert data["inputs"] == [{"name": "input", "type": "f32[N,1,8,8]"}]
    assert data["outputs"] == [{"name": "logits", "type": "f32[N,10]"}]


def test_digits_accuracy_through_qir():
    test = np.load(DIGITS / "digits_test.npz")
    assert test["x"].dtype == np.float32 and test["x"].shape[1:] == (1, 8, 8)
    assert test["y"].dtype == np.int64
    logits = qir.compile(str(DIGITS / "digits.onnx"), target="reference").run({"input": test["x"]})["logits"]
    assert (logits.argmax(1) == test["y"]).mean() >= 0.97
    assert (DIGITS / "digits.onnx").stat().st_size + (DIGITS / "digits_test.npz").stat().st_size < 1 << 20
