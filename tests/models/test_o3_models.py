"""-O3 on real models (issue 4's "done when").

1. Models whose BatchNorm nodes are still in the graph, built with PyTorch here
   (tests/models/bn_models.py: ResNet-18 and MobileNetV2-style CNNs, a transformer encoder
   block), exported with TrainingMode.PRESERVE and no constant folding:
   - qir's -O3 graph keeps the outputs: max|Δ| / max|ref| < 1e-4 against onnxruntime on the
     original model (reference interpreter);
   - its ONNX export passes onnx.checker, has no BatchNormalization, has no more nodes than
     onnxruntime's ORT_ENABLE_BASIC graph, and runs in onnxruntime with the same outputs;
   - every node's provenance is non-empty and names only source-model nodes, and each
     Conv → BatchNormalization → Relu/Clip chain of the source ends in one conv node naming all three.
2. The nine light models of the onnx wheel and the digits model keep their outputs after -O3.

onnxruntime is an oracle and a yardstick here only. Skipped without torch (part 1).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import qir
from qir.errors import UnsupportedOpError

ROOT = Path(__file__).resolve().parents[2]
REL_TOL = 1e-4


def _load_tool():
    spec = importlib.util.spec_from_file_location("qir_tools_compare_ort", ROOT / "tools" / "compare_ort.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()

pytestmark = pytest.mark.slow


def source_provenance(graph) -> set[str]:
    """Names an imported (unoptimized) graph's nodes cite: the source model's node names."""
    return {name for node in graph.walk() for name in node.provenance}


def check_provenance(graph, sources: set[str]) -> None:
    bad = [(n.name, n.op, n.provenance) for n in graph.walk()
           if not n.provenance or not set(n.provenance) <= sources]
    assert not bad, f"{len(bad)} node(s) with empty or made-up provenance, e.g. {bad[:5]}"


def conv_bn_act_chains(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(Conv, BatchNormalization, Relu/Clip) node-name triples chained by single uses."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}

    def only_user(node, op_types):
        out = node.output[0]
        us = users.get(out, [])
        return us[0] if len(us) == 1 and us[0].op_type in op_types and out not in outputs else None

    chains = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        bn = only_user(node, ("BatchNormalization",))
        act = bn and only_user(bn, ("Relu", "Clip"))
        if act:
            chains.append((node.name, bn.name, act.name))
    return chains


class Result:
    """Everything measured once per model, shared by its tests."""

    def __init__(self, name: str, path: Path, feeds: dict[str, np.ndarray]):
        self.name, self.path, self.feeds = name, path, feeds
        self.original = onnx.load(str(path))
        self.reference = tool.ort_outputs(self.original, feeds)
        self.sources = source_provenance(qir.load_onnx(self.original))
        self.error: BaseException | None = None
        self.graph = self.exported = None
        try:
            self.graph, self.seconds, self.timer = tool.qir_o3(path)
        except UnsupportedOpError as exc:
            pytest.skip(f"qir does not import {name} yet: {exc.message.splitlines()[0]}")
        except Exception as exc:  # noqa: BLE001  (each test reports it)
            self.error = exc

    def o3(self):
        if self.error is not None:
            raise AssertionError(f"-O3 failed on {self.name}: {type(self.error).__name__}: {self.error}") \
                from self.error
        return self.graph

    def export(self) -> onnx.ModelProto:
        if self.exported is None:
            self.exported = tool.export_o3(self.o3())
        return self.exported


_CACHE: dict[str, Result] = {}


def _result(name: str, make) -> Result:
    if name not in _CACHE:
        _CACHE[name] = Result(name, *make())
    return _CACHE[name]


# -- 1. models with BatchNorm kept ----------------------------------------------------------------

@pytest.fixture(scope="module", params=tool.TORCH_MODELS)
def bn_case(request, tmp_path_factory) -> Result:
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0, CPU)")
    from tests.models import bn_models

    name = request.param
    return _result(name, lambda: bn_models.export(name, tmp_path_factory.mktemp(name) / f"{name}.onnx"))


def test_torch_export_keeps_batchnorm(bn_case):
    """The export really has BatchNorm nodes (CNNs), so the tests below check folding."""
    bn = tool.op_histogram(bn_case.original)["BatchNormalization"]
    assert bn > 0 or bn_case.name == "transformer"


def test_o3_keeps_outputs(bn_case):
    ours = tool.qir_outputs(bn_case.o3(), bn_case.feeds)
    rel = tool.rel_diff(ours, bn_case.reference)
    assert rel < REL_TOL, f"{bn_case.name}: max|Δ|/max|ref| = {rel:.2e} after -O3"


def test_o3_export_has_no_batchnorm(bn_case):
    exported = bn_case.export()
    onnx.checker.check_model(exported, full_check=True)
    hist = tool.op_histogram(exported)
    assert hist["BatchNormalization"] == 0, f"{bn_case.name}: BatchNormalization left: {dict(hist)}"


def test_o3_export_no_bigger_than_ort_basic(bn_case):
    ours = tool.node_count(bn_case.export())
    basic = tool.ort_optimized(bn_case.path, "basic")
    theirs = tool.node_count(basic)
    assert ours <= theirs, (f"{bn_case.name}: qir -O3 export has {ours} nodes, ORT BASIC {theirs}\n"
                            f"qir: {dict(tool.op_histogram(bn_case.export()))}\n"
                            f"ORT: {dict(tool.op_histogram(basic))}")


def test_o3_export_runs_in_onnxruntime(bn_case):
    exported = bn_case.export()
    names = [v.name for v in exported.graph.output]
    assert names == [v.name for v in bn_case.original.graph.output]
    assert [v.name for v in exported.graph.input if v.name not in {t.name for t in exported.graph.initializer}] \
        == list(bn_case.feeds)
    rel = tool.rel_diff(tool.ort_outputs(exported, bn_case.feeds), bn_case.reference)
    assert rel < REL_TOL, f"{bn_case.name}: exported -O3 model in onnxruntime: max rel Δ {rel:.2e}"


def test_o3_provenance(bn_case):
    graph = bn_case.o3()
    onnx_names = {n.name for n in bn_case.original.graph.node}
    assert bn_case.sources <= onnx_names, "the importer's provenance should be ONNX node names"
    check_provenance(graph, bn_case.sources)
    # The ONNX export records provenance in every node's doc_string.
    undocumented = [n.name for n in bn_case.export().graph.node
                    if not any(src in n.doc_string for src in bn_case.sources)]
    assert not undocumented, f"exported nodes without provenance in doc_string: {undocumented[:5]}"


def test_fused_conv_names_conv_bn_and_activation(bn_case):
    chains = conv_bn_act_chains(bn_case.original)
    if bn_case.name == "transformer":
        assert not chains
        return
    assert chains, "the CNN should have Conv → BatchNormalization → Relu/Clip chains"
    graph = bn_case.o3()
    conv_provenance = [set(n.provenance) for n in graph.walk() if "conv" in n.op.split(".")[-1]]
    missing = [c for c in chains if not any(set(c) <= p for p in conv_provenance)]
    assert not missing, (f"{len(missing)}/{len(chains)} Conv→BN→act chains not fused into one conv "
                         f"naming all three, e.g. {missing[:3]}")


# -- 2. the nine light models and digits ------------------------------------------------------------

def _light_cases() -> list[tuple[str, Path]]:
    from tests.models.test_light_models import MODELS

    return [(m["name"], m["path"]) for m in MODELS]


LIGHT = _light_cases()


@pytest.mark.parametrize("name,path", LIGHT, ids=[n for n, _ in LIGHT])
def test_light_model_keeps_outputs_after_o3(name, path):
    from tests.models.test_light_models import official_inputs

    case = _result(name, lambda: (path, official_inputs(onnx.load(str(path)))))
    ours = tool.qir_outputs(case.o3(), case.feeds)
    rel = tool.rel_diff(ours, case.reference)
    assert rel < REL_TOL, f"{name}: max|Δ|/max|ref| = {rel:.2e} after -O3"
    check_provenance(case.o3(), case.sources)


@pytest.mark.parametrize("name,path", LIGHT, ids=[n for n, _ in LIGHT])
def test_light_model_keeps_logits_after_o3(name, path, tmp_path):
    """The same with the final Softmax cut off: its uniform output would hide wrong logits."""
    from tests.models.test_light_models import official_inputs

    model = onnx.load(str(path))
    stripped = tool.without_final_softmax(model)
    if stripped is None:
        pytest.skip(f"{name} has no final Softmax (its output is compared above)")
    cut = tmp_path / f"{name}_logits.onnx"
    onnx.save(stripped, str(cut))
    case = Result(f"{name} logits", cut, official_inputs(model))
    reference = np.asarray(case.reference[0])
    assert np.abs(reference).max() > 1e-2, f"{name}: the logits are ~0, the comparison would be vacuous"
    rel = tool.rel_diff(tool.qir_outputs(case.o3(), case.feeds), case.reference)
    assert rel < REL_TOL, f"{name} logits: max|Δ|/max|ref| = {rel:.2e} after -O3"


def test_light_resnet50_o3_under_5_seconds():
    path = dict(LIGHT).get("resnet50")
    if path is None:
        pytest.skip("the light resnet50 is not in this onnx wheel")
    _, seconds, timer = tool.qir_o3(path)
    assert seconds < 5.0, f"-O3 on the light resnet50 took {seconds:.1f} s\n" + (timer.text() if timer else "")


def test_digits_keeps_outputs_after_o3():
    if not tool.DIGITS.exists():
        pytest.skip("examples/digits/digits.onnx is not there")
    case = _result("digits", lambda: (tool.DIGITS, tool.digits_feeds()))
    ours = tool.qir_outputs(case.o3(), case.feeds)
    rel = tool.rel_diff(ours, case.reference)
    assert rel < REL_TOL, f"digits: max|Δ|/max|ref| = {rel:.2e} after -O3"
    check_provenance(case.o3(), case.sources)
    exported = case.export()
    onnx.checker.check_model(exported, full_check=True)
    assert tool.rel_diff(tool.ort_outputs(exported, case.feeds), case.reference) < REL_TOL
