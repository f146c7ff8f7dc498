"""``qirc opt`` and ``qirc passes``, and the plugin example installed through its entry point.

Test-only passes registered here have names starting with ``test-opt-``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qir.api import as_graph
from qir.cli.main import cli
from qir.ir import serialize
from qir.passes.registry import Pass, register_pass
from qir.ir.interpreter import Interpreter

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "qir-plugin-example"


@register_pass
@attrs.define
class DropIdentity(Pass):
    """Remove identity nodes whose output is not a graph output."""

    name = "test-opt-drop-identity"
    keep: int = 0  # leave this many identities in place

    def run(self, graph, ctx):
        found = [n for n in graph.nodes if n.op == "tensor.identity"
                 and not any(v is n.output for v in graph.outputs)][self.keep:]
        for node in found:
            graph.replace_all_uses(node.output, node.inputs[0])
            graph.erase_node(node)
        return bool(found)


@register_pass
@attrs.define
class Crash(Pass):
    """Raise on graphs that have a max_pool."""

    name = "test-opt-crash"

    def run(self, graph, ctx):
        if any(n.op == "nn.max_pool" for n in graph.nodes):
            raise ValueError("max_pool not welcome")
        return False


@register_pass
@attrs.define
class Break(Pass):
    """Reverse the node order (an invalid graph)."""

    name = "test-opt-break"

    def run(self, graph, ctx):
        graph.nodes.reverse()
        return True


@pytest.fixture
def model(tmp_path) -> Path:
    """x[N,2,6,6] -> Conv -> Identity -> Relu -> MaxPool 2x2 -> y."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Identity", ["c"], ["i"], name="ident"),
         helper.make_node("Relu", ["i"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 3, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


FEEDS = {"x": np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)}


def outputs(path: Path) -> list[np.ndarray]:
    return Interpreter(as_graph(str(path))).run(FEEDS)


def qirc(*args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("suffix", [".qir", ".qirb", ".onnx"])
def test_opt_levels_write_every_format_with_the_same_outputs(model, tmp_path, suffix):
    expected = outputs(model)
    for level in ("-O0", "-O3"):
        out = tmp_path / f"out{level}{suffix}"
        result = qirc("opt", model, level, "-o", out)
        assert f"wrote {out}" in result.output
        np.testing.assert_allclose(outputs(out)[0], expected[0], rtol=1e-5, atol=1e-6)


def test_default_is_O2_and_no_output_writes_nothing(model, tmp_path):
    result = qirc("opt", model, "--passes", "test-opt-drop-identity")
    assert "nothing written" in result.output and "1 pass(es)" in result.output
    assert not list(tmp_path.glob("out*"))


def test_format_overrides_the_suffix_and_input_dims_apply(model, tmp_path):
    out = tmp_path / "model.bin"
    qirc("opt", model, "-O1", "-o", out, "--format", "qirb", "--input-dim", "x", "2,2,6,6")
    graph = serialize.load(out)
    assert graph.inputs[0].type.shape == (2, 2, 6, 6)
    assert "cannot tell the output format" in qirc("opt", model, "-o", tmp_path / "m.txt", ok=False).output


def test_passes_with_options_and_time_passes(model, tmp_path):
    out = tmp_path / "out.qir"
    result = qirc("opt", model, "--passes", "test-opt-drop-identity{keep=0},dce", "--time-passes", "-o", out)
    text = result.output
    assert "pass timing" in text and "total ms" in text and "nodes before" in text
    row = next(line for line in text.splitlines() if "test-opt-drop-identity" in line)
    assert "-1" in row  # the identity is gone
    assert "tensor.identity" not in out.read_text()
    kept = qirc("opt", model, "--passes", "test-opt-drop-identity{keep=1}", "-o", out)
    assert "tensor.identity" in out.read_text() and "4 -> 4 nodes" in kept.output


def test_print_after_and_before(model):
    text = qirc("opt", model, "--passes", "test-opt-drop-identity,dce",
                "--print-after", "test-opt-drop-identity", "--print-before", "all").output
    headers = [line for line in text.splitlines() if line.startswith("// -----")]
    assert headers == ["// ----- IR before test-opt-drop-identity ----- //",
                       "// ----- IR after test-opt-drop-identity ----- //",
                       "// ----- IR before dce ----- //"]
    assert "graph @small" in text


def test_disable_pass(model):
    text = qirc("opt", model, "--passes", "test-opt-drop-identity,dce", "--disable-pass",
                "test-opt-drop-identity", "--time-passes").output
    assert "test-opt-drop-identity" not in text and "4 -> 4 nodes" in text


def test_dump_dir(model, tmp_path):
    qirc("opt", model, "--passes", "test-opt-drop-identity,dce", "--dump-dir", tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").glob("*.qir")) == [
        "00-input.qir", "01-test-opt-drop-identity.qir", "02-dce.qir"]
    assert "tensor.identity" not in (tmp_path / "d" / "02-dce.qir").read_text()
    assert len(serialize.load(tmp_path / "d" / "02-dce.qir").nodes) == 3  # each dump loads


def test_verify_each_names_the_pass(model, tmp_path):
    result = qirc("opt", model, "--passes", "test-opt-break", "--verify-each", "-o", tmp_path / "o.qir", ok=False)
    assert result.exit_code == 1
    assert "pass 'test-opt-break' left an invalid graph" in result.output
    assert "Traceback" not in result.output
    # Without --verify-each the final check still refuses to write it and says what to do.
    result = qirc("opt", model, "--passes", "test-opt-break", "-o", tmp_path / "o.qir", ok=False)
    assert result.exit_code == 1 and "the optimized graph is invalid" in result.output
    assert "--verify-each" in result.output and not (tmp_path / "o.qir").exists()


def test_crash_reproducer_command_reproduces(model, tmp_path):
    result = qirc("opt", model, "--passes", "test-opt-drop-identity,test-opt-crash",
                  "--dump-dir", tmp_path / "d", ok=False)
    assert result.exit_code == 1
    assert "pass 'test-opt-crash' failed: ValueError: max_pool not welcome" in result.output
    command = result.output.split("reproduce with: ")[1].strip()
    repro = tmp_path / "d" / "reproducer-test-opt-crash.qirb"
    assert command == f"qirc opt {repro.resolve()} --passes test-opt-crash"
    assert "tensor.identity" not in str(serialize.load(repro))  # the IR before the failing pass
    again = qirc(*shlex.split(command)[1:], ok=False)
    assert again.exit_code == 1 and "max_pool not welcome" in again.output


@pytest.mark.parametrize("args, message", [
    (["--passes", "test-opt-drop-identiy"], "unknown pass 'test-opt-drop-identiy'"),
    (["--passes", "test-opt-drop-identity{bogus=1}"], "has no option(s) ['bogus']"),
    (["--passes", "test-opt-drop-identity{keep=x}"], "bad option value"),
    (["--passes", "a,,{"], "bad pipeline"),
    (["--disable-pass", "nope-nope"], "--disable-pass nope-nope: unknown pass"),
    (["--print-after", "nope-nope"], "--print-after nope-nope: unknown pass"),
])
def test_bad_pipelines_are_user_errors(model, args, message):
    result = qirc("opt", model, *args, ok=False)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_unknown_pass_suggests_close_names(model):
    result = qirc("opt", model, "--passes", "test-opt-drop-identiy", ok=False)
    assert "hint: did you mean test-opt-drop-identity" in result.output


def test_bad_opt_level_is_a_usage_error(model):
    assert qirc("opt", model, "-O7", ok=False).exit_code == 2


def test_passes_lists_built_in_and_other_passes():
    text = qirc("passes").output
    assert "registered passes" in text and "origin" in text
    rows = {row["name"]: row for row in json.loads(qirc("passes", "--json").output)}
    assert rows["test-opt-drop-identity"]["origin"] == "tests.cli.test_opt"
    assert rows["test-opt-drop-identity"]["options"] == "keep=0"
    assert rows["test-opt-drop-identity"]["description"] == "Remove identity nodes whose output is not a graph output."
    for name in ("dce", "infer-shapes"):
        if name in rows:
            assert rows[name]["origin"] == "built-in" and rows[name]["in_pipeline"] == 1


# -- the plugin example ------------------------------------------------------------------------

def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_plugin_example_installs_lists_and_runs(model, tmp_path):
    """pip-installs examples/qir-plugin-example (editable, offline) into this venv; a fresh qirc
    process finds its pass through the `qir.passes` entry point."""
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
           "-e", str(PLUGIN)]
    installed = _run(*pip)
    assert installed.returncode == 0, installed.stderr
    qirc_cmd = [sys.executable, "-m", "qir.cli"]

    listed = _run(*qirc_cmd, "passes", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["swap-relu-maxpool"]["origin"] == "qir-plugin-example"
    assert "swap-relu-maxpool" in _run(*qirc_cmd, "passes").stdout

    out = tmp_path / "out.onnx"
    ran = _run(*qirc_cmd, "opt", str(model), "--passes", "swap-relu-maxpool", "--time-passes",
               "--verify-each", "-o", str(out))
    assert ran.returncode == 0, ran.stderr
    assert "pass timing" in ran.stdout and "swap-relu-maxpool" in ran.stdout and "total ms" in ran.stdout
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.index("MaxPool") < ops.index("Relu")  # swapped
    np.testing.assert_array_equal(outputs(out)[0], outputs(model)[0])
