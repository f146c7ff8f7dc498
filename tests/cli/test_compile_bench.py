"""qirc compile (artifact folders), qirc run on them, and qirc bench (with --compare onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import qir
from qir.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
MODEL = DIGITS / "digits.onnx"


def qirc(*args, code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    x = np.load(DIGITS / "digits_test.npz")["x"]
    np.save(folder / "x.npy", x[:16])
    np.savez(folder / "calib.npz", input=x[:32])
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compile_then_run_the_folder(data, tmp_path):
    out = tmp_path / "out"
    text = qirc("compile", MODEL, "--target", "reference", "--num-threads", "2", "-o", out).output
    assert "wrote" in text and "reference_context.bin" in text
    assert sorted(tree(out)) == ["context_binaries/reference_context.bin", "input_specs.json",
                                 "manifest.json", "model.qirb"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"] == {"num_threads": 2}
    assert manifest["created_by"] == ("qirc compile digits.onnx --target reference --num-threads 2 "
                                      "--opt-level 3")
    qirc("run", out, "--input", data / "x.npy", "--output-dir", tmp_path / "o")
    got = np.load(tmp_path / "o" / "logits.npy")
    x = np.load(data / "x.npy")
    np.testing.assert_array_equal(got, qir.load(out).run({"input": x})["logits"])
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)
    # The same build written elsewhere is byte-identical (the manifest holds no paths).
    qirc("compile", MODEL, "--target", "reference", "--num-threads", "2", "-o", tmp_path / "again")
    assert tree(tmp_path / "again") == tree(out)


def test_compile_quantized_with_qnn_spellings(data, tmp_path):
    out = tmp_path / "q"
    np.save(tmp_path / "x4.npy", np.load(data / "x.npy")[:4])
    np.savez(tmp_path / "calib.npz", input=np.load(data / "x.npy")[:4])
    qirc("compile", "--input_network", MODEL, "--quantize", "int8", "--input_list",
         tmp_path / "calib.npz", "-d", "input", "4,1,8,8", "-o", out)
    assert (out / "quantization_config.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantized"] is True and "--quantize int8 --calib calib.npz" in manifest["created_by"]
    specs = json.loads((out / "input_specs.json").read_text())
    assert specs["inputs"][0]["shape"] == [4, 1, 8, 8] and specs["inputs"][0]["quantization"]
    text = qirc("run", out, "--input", tmp_path / "x4.npy").output
    assert "logits: float32[4, 10]" in text  # quantized, but float in and out
    result = qirc("run", out, "--target", "nosuch", "--input", tmp_path / "x4.npy", code=1)
    assert "compiled for target 'reference'" in result.output


def test_compile_usage_errors(data, tmp_path):
    assert "needs --calib" in qirc("compile", MODEL, "--quantize", "int8", "-o", tmp_path / "o",
                                   code=2).output
    assert "only used with --quantize" in qirc("compile", MODEL, "--calib", data / "calib.npz",
                                               "-o", tmp_path / "o", code=2).output
    result = qirc("compile", MODEL, "--target", "nosuch", "-o", tmp_path / "o", code=1)
    assert "unknown target 'nosuch'" in result.output and not (tmp_path / "o").exists()
    help_text = qirc("compile", "--help").output
    assert "--input-dim" in help_text and "--input_list" not in help_text


def test_run_reports_a_corrupt_folder_in_one_line(data, tmp_path):
    out = tmp_path / "out"
    qirc("compile", MODEL, "-o", out)
    blob = out / "model.qirb"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    result = qirc("run", out, "--input", data / "x.npy", code=1)
    assert "model.qirb" in result.output and "sha256" in result.output
    assert "Traceback" not in result.output


def test_bench_compare_onnxruntime(tmp_path):
    result = qirc("bench", MODEL, "--compare", "onnxruntime", "--runs", "5", "--warmup", "1",
                  "--threads", "1", "--batch", "2", "--json", tmp_path / "b.json",
                  "--profile-out", tmp_path / "trace.json")
    assert "onnxruntime p50 / qir p50 =" in result.output
    assert "ORT/qir" in result.output and "slowest layers" in result.output
    doc = json.loads((tmp_path / "b.json").read_text())
    (row,) = doc["results"]
    assert doc["batch"] == 2 and row["threads"] == 1 and row["ratio"] > 0
    assert row["onnxruntime"]["runs"] == 5 and row["qir"]["latency"]["runs"] == 5
    assert row["ratio"] == pytest.approx(row["onnxruntime"]["p50_ms"] / row["qir"]["latency"]["p50_ms"])
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert len([e for e in events if e.get("cat") == "layer"]) == 5 * len(qir.compile(str(MODEL)).graph.nodes)


def test_bench_an_artifact_over_thread_counts(tmp_path):
    qirc("compile", MODEL, "-o", tmp_path / "out")
    result = qirc("bench", tmp_path / "out", "--runs", "2", "--warmup", "0", "--num-threads", "1,2",
                  "--json", tmp_path / "b.json")
    assert [r["threads"] for r in json.loads((tmp_path / "b.json").read_text())["results"]] == [1, 2]
    assert "p99" in result.output
    assert "needs an .onnx MODEL" in qirc("bench", tmp_path / "out", "--compare", "onnxruntime",
                                          code=1).output
    assert "positive integers" in qirc("bench", MODEL, "--threads", "0", code=1).output


def test_compile_kryo_model_library(tmp_path):
    """--arch writes model.so (the C ABI of model_abi.h) beside the context binary; the manifest
    checksums both, and the artifact still loads."""
    pytest.importorskip("llvmlite")
    import shutil

    if shutil.which("ld.lld-16") is None:
        pytest.skip("ld.lld-16 is not installed (make install-toolchains)")
    out = tmp_path / "lib"
    result = CliRunner().invoke(cli, ["compile", str(DIGITS / "digits.onnx"), "--target", "kryo", "--arch", "x86_64",
                                      "--input-dim", "input", "2,1,8,8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"model.so", "model_abi.h"} <= set(manifest["files"])
    assert qir.load(out).target == "kryo"
    refused = CliRunner().invoke(cli, ["compile", str(DIGITS / "digits.onnx"), "--arch", "x86_64", "-o",
                                       str(tmp_path / "x")])
    assert refused.exit_code != 0 and "kryo" in refused.output
