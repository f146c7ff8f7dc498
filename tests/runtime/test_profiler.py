"""The profiler: latency statistics, per-layer spans (interpreter hook and the run_profiled
protocol), chrome traces, interleaving and random inputs. Times are never asserted, only the
structure of what is measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import qir
from qir.errors import InputError
from qir.runtime.model import CompiledModel
from qir.runtime.profiler import (LatencyStats, ProfiledExecutable, interleaved_latencies,
                                  profile, random_feeds)

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
RUNS = 4


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    return np.load(DIGITS / "digits_test.npz")["x"]


@pytest.fixture(scope="module")
def model():
    return qir.compile(str(DIGITS / "digits.onnx"))


@pytest.fixture(scope="module")
def prof(model, digits_x):
    return profile(model, {"input": digits_x[:8]}, warmup=1, runs=RUNS)


def test_whole_model_numbers(prof):
    lat = prof.latency
    assert len(lat.samples_ms) == RUNS and all(s > 0 for s in lat.samples_ms)
    assert lat.min <= lat.p50 <= lat.p95 <= lat.p99 <= max(lat.samples_ms)
    assert prof.throughput == pytest.approx(1e3 / lat.mean)
    assert prof.peak_memory_bytes > 8 * 64 * 4  # at least the activations of one batch
    assert prof.peak_rss_bytes is None or prof.peak_rss_bytes > prof.peak_memory_bytes
    assert prof.target == "reference" and prof.num_threads == 1


def test_one_row_per_node_with_provenance(model, prof):
    nodes = {n.name: n for n in model.graph.nodes}
    assert sorted(l.name for l in prof.layers) == sorted(nodes)
    for layer in prof.layers:
        assert layer.op == nodes[layer.name].op
        assert layer.provenance == nodes[layer.name].provenance  # source-model node names
        assert layer.calls == RUNS
    assert sum(l.percent for l in prof.layers) == pytest.approx(100.0)
    assert [l.mean_ms for l in prof.layers] == sorted((l.mean_ms for l in prof.layers), reverse=True)
    assert prof.layer_source == "interpreter hook"
    # A fused node names every ONNX node it absorbed.
    assert any(len(l.provenance) == 2 for l in prof.layers)


def test_layer_spans_lie_inside_their_run_in_graph_order(model, prof):
    order = [n.name for n in model.graph.nodes]
    for r in range(RUNS):
        (run,) = [s for s in prof.spans if s.whole_run and s.run == r]
        layers = [s for s in prof.spans if not s.whole_run and s.run == r]
        assert [s.name for s in layers] == order
        assert run.start_ns <= layers[0].start_ns
        for a, b in zip(layers, layers[1:]):
            assert a.start_ns <= a.end_ns <= b.start_ns  # back to back, never overlapping
        assert layers[-1].end_ns <= run.end_ns
        # so the layers of a run add up to at most the run
        assert sum(s.end_ns - s.start_ns for s in layers) <= run.end_ns - run.start_ns


def test_chrome_trace(model, prof, tmp_path):
    path = tmp_path / "trace.json"
    prof.save_chrome_trace(path)
    events = json.loads(path.read_text())["traceEvents"]
    layers = [e for e in events if e.get("cat") == "layer"]
    assert len(layers) == len(model.graph.nodes) * RUNS
    assert len([e for e in events if e.get("cat") == "run"]) == RUNS
    for event in layers:
        assert event["ph"] == "X" and event["ts"] >= 0 and event["dur"] >= 0
        assert event["args"]["op"] == model.graph.find_node(event["name"]).op
    assert [e for e in events if e["ph"] == "M"][0]["args"]["name"].startswith("qir reference")
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]  # no temp file left


def test_json_and_tables(prof, tmp_path):
    prof.save_json(tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["latency"]["runs"] == RUNS and len(doc["layers"]) == len(prof.layers)
    assert "tracemalloc" in doc["memory_method"]
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(prof.summary_table())
    console.print(prof.table(top=3))
    text = console.export_text()
    assert "p99" in text and prof.layers[0].name in text and prof.layers[3].name not in text


def test_quantized_model_profiles_with_float_feeds(digits_x):
    m = qir.compile(str(DIGITS / "digits.onnx"), quantize="int8",
                    calibration=[{"input": digits_x[:32]}])
    p = profile(m, {"input": digits_x[:4]}, warmup=0, runs=2)
    assert len(p.layers) == len(m.graph.nodes)


class _Reporting:
    """An executable implementing the optional run_profiled protocol."""

    def __init__(self, inner):
        self.inner = inner

    def run(self, inputs):
        return self.inner.run(inputs)

    def run_profiled(self, inputs, record):
        outputs = self.inner.run(inputs)
        record("kernel_a", "fused.conv", 10, 30)
        record("kernel_b", "nn.max_pool", 30, 40)
        return outputs


class _Silent:
    def __init__(self, inner):
        self.inner = inner

    def run(self, inputs):
        return self.inner.run(inputs)


def test_run_profiled_protocol_and_fallback(model, digits_x):
    feeds = {"input": digits_x[:2]}
    reporting = CompiledModel(model.graph, "other", model.blob, _Reporting(model.executable),
                              model.options)
    assert isinstance(reporting.executable, ProfiledExecutable)
    p = profile(reporting, feeds, warmup=0, runs=2)
    assert "run_profiled" in p.layer_source
    assert [(l.name, l.calls, l.percent) for l in p.layers] == [("kernel_a", 2, pytest.approx(200 / 3)),
                                                                ("kernel_b", 2, pytest.approx(100 / 3))]
    assert p.layers[0].provenance == ("kernel_a",)  # not a graph node: its own name
    silent = CompiledModel(model.graph, "other", model.blob, _Silent(model.executable), model.options)
    p = profile(silent, feeds, warmup=0, runs=2)
    assert p.layers == () and "no per-layer times" in p.layer_source
    assert len(p.latency.samples_ms) == 2


def test_interleaving_alternates_single_calls():
    log = []
    a, b = (lambda: log.append("a")), (lambda: log.append("b"))
    samples = interleaved_latencies([a, b], warmup=1, runs=3)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(s) for s in samples] == [3, 3]


def test_bad_feeds_fail_before_timing(model):
    with pytest.raises(InputError, match="missing"):
        profile(model, {}, runs=1)
    with pytest.raises(qir.QirError, match="runs"):
        LatencyStats.of_seconds([])


def test_random_feeds_follow_the_specs(model):
    feeds = random_feeds(model, batch=3)
    assert feeds["input"].shape == (3, 1, 8, 8) and feeds["input"].dtype == np.float32
    assert model.run(feeds)["logits"].shape == (3, 10)
    np.testing.assert_array_equal(random_feeds(model, batch=3)["input"], feeds["input"])  # seeded
