"""qirc quantize and qir.compile(quantize=...) end to end: QNN's flags, the files written, encodings
overrides taking effect, and bad input as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import qir
from qir.cli.main import cli
from qir.errors import QirError
from qir.ir import serialize

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits" / "digits.onnx"
DATA = np.load(ROOT / "examples" / "digits" / "digits_test.npz")


def qirc(*args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def calib(tmp_path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, input=DATA["x"][:48])
    return path


@pytest.fixture
def input_list(tmp_path) -> Path:
    """A QNN-style input list of raw float32 files."""
    lines = []
    for i in range(4):
        raw = tmp_path / f"sample{i}.raw"
        DATA["x"][i].astype("<f4").tofile(raw)
        lines.append(f"input:={raw.name}")
    path = tmp_path / "input_list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _accuracy(graph) -> float:
    out = qir.compile(graph, opt_level=0).run({"input": DATA["x"]})["logits"]
    return float((out.argmax(1) == DATA["y"]).mean())


def test_quantize_writes_model_and_encodings_with_qnn_flags(tmp_path, input_list):
    out = tmp_path / "digits.qirb"
    result = qirc("quantize", "--input_network", DIGITS, "--input_list", input_list, "-o", out,
                  "--act_bw", "16", "--weight_bw", "8", "--bias_bw", "32",
                  "--use_per_channel_quantization", "--apply_algorithms", "cle,bc",
                  "--input_dim", "input", "1,1,8,8")  # raw files need a fixed shape
    assert "float ops: none" in result.output
    graph = serialize.load(out)
    assert graph.inputs[0].type.quant.bitwidth == 16
    out = [qir.compile(graph, opt_level=0).run({"input": x[None]})["logits"] for x in DATA["x"][:100]]
    assert (np.concatenate(out).argmax(1) == DATA["y"][:100]).mean() >= 0.95
    encodings = json.loads((tmp_path / "quantization_config.json").read_text())
    assert encodings["activation_encodings"]["input"][0]["bitwidth"] == 16
    assert any(k.endswith("weight_q") or "weight" in k for k in encodings["param_encodings"])


def test_encodings_override_fixes_a_tensor(tmp_path, calib):
    """The hand-written form (offset used as a zero point) pins a tensor's range."""
    relu = "/features/features.1/Relu_output_0"
    overrides = tmp_path / "enc.json"
    overrides.write_text(json.dumps({
        "activation_encodings": {relu: {"bitwidth": 8, "min": 0.0, "max": 4.0,
                                        "scale": 4.0 / 255, "offset": 0}},
        "activation_bitwidth": 8, "param_bitwidth": 8, "bias_bitwidth": 32}))
    out = tmp_path / "d.qir"
    qirc("quantize", DIGITS, "--calib", calib, "-o", out, "--quantization_overrides", overrides)
    graph = serialize.load(out)
    value = next(v for n in graph.nodes for v in n.outputs if v.name == relu)
    assert value.type.quant.scale[0] == pytest.approx(4.0 / 255)
    assert value.type.quant.zero_point[0] == 0


def test_precision_override_and_debug_report(tmp_path, calib):
    out = tmp_path / "d.qirb"
    report = tmp_path / "report.json"
    result = qirc("quantize", DIGITS, "--calib", calib, "-o", out, "--precision", "nn.max_pool=float",
                  "--debug-accuracy", "--report", report)
    assert "nn.max_pool ×2" in result.output
    rows = json.loads(report.read_text())["rows"]
    assert rows and all(r["sqnr_db"] is None or r["sqnr_db"] > 20 for r in rows if isinstance(r, dict))


@pytest.mark.parametrize("args, message", [
    (["--calib", "EMPTY"], "empty"),
    (["--weight-bitwidth", "7"], "7"),
    (["--precision", "conv9=int16"], "conv9"),
    (["--precision", "nn.relu=int12"], "int12"),
])
def test_bad_options_are_one_line_errors(tmp_path, calib, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [str(empty) if a == "EMPTY" else a for a in args]
    if "--calib" not in args:
        args = ["--calib", calib] + args
    result = qirc("quantize", DIGITS, "-o", tmp_path / "x.qirb", *args, ok=False)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.qirb").exists()


def test_bad_encodings_files(tmp_path, calib):
    cases = {
        "unknown tensor": ({"activation_encodings": {"/features/features.1/Relu_outptu_0":
                                                     {"bitwidth": 8, "scale": 0.1, "offset": 0}}},
                           "Relu_output_0"),
        "bitwidth 7": ({"activation_encodings": {"input": {"bitwidth": 7, "scale": 0.1, "offset": 0}}},
                       "7"),
        "min > max": ({"activation_encodings": {"input": {"bitwidth": 8, "min": 1.0, "max": -1.0}}},
                      "min"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / "enc.json"
        path.write_text(json.dumps(content))
        result = qirc("quantize", DIGITS, "--calib", calib, "-o", tmp_path / "x.qirb",
                      "--overrides", path, ok=False)
        assert result.exit_code == 1, name
        assert message in result.output, (name, result.output)


def test_compile_api_schemes():
    feeds = [{"input": DATA["x"][:32]}]
    for scheme in ("int8", "a16w8", "fp16", "mixed"):
        m = qir.compile(str(DIGITS), quantize=scheme, calibration=feeds)
        out = m.run({"input": DATA["x"]})["logits"]
        assert out.dtype == np.float32
        assert (out.argmax(1) == DATA["y"]).mean() >= 0.97, scheme
    with pytest.raises(QirError, match="calibration"):
        qir.compile(str(DIGITS), quantize="int8")
    with pytest.raises(QirError, match="empty"):
        qir.compile(str(DIGITS), quantize="int8", calibration=[])
    with pytest.raises(QirError, match="quantize="):
        qir.compile(str(DIGITS), quantize="int7", calibration=feeds)


def test_export_qdq_runs_in_onnxruntime(tmp_path, calib):
    """The QDQ export agrees with qir's own integer execution within a few output steps:
    onnxruntime requantizes in float with one round-half-even, qir with the fixed-point rule
    (docs/quantization.md), so single elements may differ by an LSB per layer."""
    ort = pytest.importorskip("onnxruntime")
    out, onnx_path = tmp_path / "d.qirb", tmp_path / "d.qdq.onnx"
    qirc("quantize", DIGITS, "--calib", calib, "-o", out, "--export-qdq", onnx_path)
    graph = serialize.load(out)
    x = DATA["x"][:64]
    ours = qir.compile(graph, opt_level=0).run({"input": x})["logits"]
    theirs = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    step = graph.outputs[0].type.quant.scale[0]
    assert np.abs(ours - theirs).max() <= 4 * step + 1e-6
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.98
