"""The accuracy debugger and automatic mixed precision.

The model: a LayerNorm + single-head attention block written with onnx.helper, whose LayerNorm
gamma scales one channel ×1000 (a "massive activation" that the projections ignore: their weight
row for it is zero). Per-tensor 8 bits over ±3000 wipe the other channels of the LayerNorm
output, so q/k/v and everything after them are garbage, while the LayerNorm output's own SQNR
looks fine (the outlier channel carries its energy). Float references come from onnxruntime;
quantized outputs are checked through ``qir.compile(...).run``, which quantizes the float inputs
itself (not the debugger's code path).
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

import qir
from qir.errors import OptionError, QirError
from qir.passes import run as run_passes
from qir.passes.quantize.config import Config
from qir.passes.quantize.debugger import (AccuracyReport, TensorReport, auto_mixed_precision,
                                          compare, debug_accuracy)
from qir.passes.quantize.pipeline import calibrate_graph

D, T, OUTLIER_CHANNEL = 16, 8, 3


def attention_model(outlier: float, zero_row: bool = True) -> bytes:
    """LayerNorm (gamma[3] = ``outlier``) → q/k/v projections → Softmax(qkᵀ/4)·v → o_proj, plus
    the residual. ``zero_row``: the projections ignore the outlier channel; otherwise their
    row for it is scaled by 1/outlier (so 8-bit weights round it to zero)."""
    rng = np.random.default_rng(0)
    gamma = np.ones(D, np.float32)
    gamma[OUTLIER_CHANNEL] = outlier

    def weights(ignore_outlier: bool) -> np.ndarray:
        w = (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)
        if ignore_outlier:
            w[OUTLIER_CHANNEL] = 0.0 if zero_row else w[OUTLIER_CHANNEL] / outlier
        return w

    inits = [numpy_helper.from_array(a, n) for a, n in [
        (gamma, "ln.gamma"), (np.zeros(D, np.float32), "ln.beta"), (weights(True), "wq"),
        (weights(True), "wk"), (weights(True), "wv"), (weights(False), "wo"),
        (np.asarray(1 / np.sqrt(D), np.float32), "inv_sqrt_d")]]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.gamma", "ln.beta"], ["ln_out"], name="ln",
                         axis=-1),
        helper.make_node("MatMul", ["ln_out", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["ln_out", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["ln_out", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["k_t"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores_raw"], name="qk"),
        helper.make_node("Mul", ["scores_raw", "inv_sqrt_d"], ["scores"], name="scale"),
        helper.make_node("Softmax", ["scores"], ["attn"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"], name="attn_v"),
        helper.make_node("MatMul", ["ctx", "wo"], ["proj"], name="o_proj"),
        helper.make_node("Add", ["proj", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def samples(seed: int, batches: int = 4, batch: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, T, D)).astype(np.float32)} for _ in range(batches)]


CALIBRATION = samples(1)
HELD_OUT = samples(2, batches=1, batch=16)


def calibrated(outlier: float = 1000.0, zero_row: bool = True):
    model = attention_model(outlier, zero_row)
    graph = run_passes(qir.load_onnx(model), opt_level=3)
    return model, calibrate_graph(graph, Config(), CALIBRATION)


def output_sqnr(model: bytes, quantized_graph, feeds) -> float:
    """SQNR (dB) of the quantized graph's output against onnxruntime's float output."""
    session = ort.InferenceSession(model)
    compiled = qir.compile(quantized_graph, opt_level=0)
    ref = np.concatenate([session.run(None, f)[0] for f in feeds]).astype(np.float64)
    got = np.concatenate([compiled.run(f)["y"] for f in feeds]).astype(np.float64)
    return 10 * math.log10((ref ** 2).sum() / ((got - ref) ** 2).sum())


@pytest.fixture(scope="module")
def outlier_case():
    model, cal = calibrated()
    return model, cal, debug_accuracy(cal)


def test_output_metrics_match_numpy_on_onnxruntime_reference(outlier_case):
    model, cal, _ = outlier_case
    result = cal.lower()
    report = compare(cal.graph, result.graph, HELD_OUT)
    ref = ort.InferenceSession(model).run(None, HELD_OUT[0])[0].astype(np.float64)
    got = qir.compile(result.graph, opt_level=0).run(HELD_OUT[0])["y"].astype(np.float64)
    err = got - ref
    row = report["y"]
    assert row.is_output and row.precision == "int8" and row.node is not None
    assert row.provenance == ("residual",)
    assert row.sqnr_db == pytest.approx(10 * math.log10((ref ** 2).sum() / (err ** 2).sum()), abs=1e-3)
    assert row.mse == pytest.approx((err ** 2).mean(), rel=1e-3)
    assert row.cosine == pytest.approx((ref * got).sum() / np.sqrt((ref ** 2).sum() * (got ** 2).sum()),
                                       abs=1e-6)
    assert row.max_abs_error == pytest.approx(np.abs(err).max(), rel=1e-3, abs=1e-5)
    assert report.samples == 16 and report.output_sqnr_db == row.sqnr_db


def test_report_puts_the_wrecked_tensors_first_and_blames_the_outlier(outlier_case):
    model, cal, report = outlier_case
    sqnrs = [r.sqnr_db for r in report.rows]
    assert sqnrs == sorted(sqnrs)
    # q/k/v (and all after them) are garbage at W8A8 and come first...
    assert {"q", "k", "v"} <= {r.name for r in report.rows[:5]}
    assert all(report[n].sqnr_db < 3 for n in ("q", "k", "v"))
    # ...but they lose nothing themselves: they inherit it from ln_out, whose own SQNR looks
    # fine while its quantization alone wipes what q/k/v read.
    assert all(abs(report[n].drop_db) < 1 for n in ("q", "k", "v"))
    ln = report["ln_out"]
    assert ln.sqnr_db > 30 and ln.impact_sqnr_db < 3 and ln.impact16_sqnr_db > 30
    assert min(report.rows, key=lambda r: r.sensitivity_db).name == "ln_out"
    suggestions = report.suggestions(30.0)
    assert [s.target for s in suggestions.details] == ["ln_out"]
    assert suggestions.details[0].precision == "int16" and suggestions.details[0].kind == "tensor"
    assert dict(suggestions) == suggestions.overrides == {"ln_out": "int16"}
    assert "at 16 bits" in suggestions.details[0].reason
    # The suggestion works, as measured against onnxruntime on held-out data.
    fixed = cal.lower(Config(overrides=suggestions))
    assert output_sqnr(model, cal.lower().graph, HELD_OUT) < 15
    assert output_sqnr(model, fixed.graph, HELD_OUT) > 30


def test_auto_mixed_precision_raises_only_the_outlier_tensor(outlier_case):
    model, cal, _ = outlier_case
    amp = auto_mixed_precision(cal, target_sqnr_db=30.0)
    assert amp.met and amp.chosen == {"ln_out": "int16"}
    assert [h.step for h in amp.history] == [0, 1]
    assert amp.history[0].change == {} and amp.history[0].score < 30 <= amp.history[1].score
    assert amp.history[1].change == {"ln_out": "int16"}
    assert output_sqnr(model, amp.result.graph, HELD_OUT) > 30
    # The choice is reproducible from `chosen` alone, and deterministic.
    again = cal.lower(Config(overrides=amp.chosen))
    assert str(again.graph) == str(amp.result.graph)
    second = auto_mixed_precision(cal, target_sqnr_db=30.0)
    assert second.chosen == amp.chosen and second.history == amp.history


def test_auto_mixed_precision_keeps_float_what_16_bits_cannot_save():
    model, cal = calibrated(outlier=1e5)
    report = debug_accuracy(cal)
    assert report["ln_out"].impact16_sqnr_db < 30  # even 16 bits over ±3e5 wipe the rest
    amp = auto_mixed_precision(cal, target_sqnr_db=30.0)
    # ln has no integer rule (it is float already): its readers stay float too.
    assert amp.met and amp.chosen == {"q_proj": "float", "k_proj": "float", "v_proj": "float"}
    assert amp.result.float_ops.get("linalg.matmul") == 3
    assert output_sqnr(model, cal.lower().graph, HELD_OUT) < 15
    assert output_sqnr(model, amp.result.graph, HELD_OUT) > 30


def test_an_op_that_loses_in_its_weights_is_suggested_float():
    # The projections' outlier row is 1/1000 of the rest: 8-bit weights round it to zero, so
    # q/k/v lose ~1/16 of their signal in their own arithmetic even with ln_out at 16 bits.
    model, cal = calibrated(zero_row=False)
    report = debug_accuracy(cal, cal.lower(Config(overrides={"ln_out": "int16"})))
    for name in ("q", "k", "v"):
        row = report[name]
        assert row.inherited_sqnr_db > 30 > row.sqnr_db and row.drop_db > 10
    suggestions = report.suggestions(30.0)
    assert suggestions.overrides == {"q_proj": "float", "k_proj": "float", "v_proj": "float"}
    assert all(s.kind == "node" for s in suggestions.details)
    amp = auto_mixed_precision(cal, target_sqnr_db=30.0)
    assert amp.met and len(amp.history) <= 3
    assert {k: v for k, v in amp.chosen.items() if v == "float"} == suggestions.overrides
    assert output_sqnr(model, amp.result.graph, HELD_OUT) > 30


def test_auto_mixed_precision_with_a_user_metric(outlier_case):
    model, cal, _ = outlier_case
    seen = []

    def mean_abs_error(floats, quants):
        seen.append(floats["y"].shape)
        return -float(np.abs(floats["y"] - quants["y"]).mean())

    amp = auto_mixed_precision(cal, metric=mean_abs_error, target=-0.02)
    assert seen[0] == (16, T, D)  # all calibration samples, concatenated
    assert amp.met and amp.chosen == {"ln_out": "int16"}
    assert amp.history[0].score < -0.02 <= amp.history[-1].score
    session = ort.InferenceSession(model)
    ref = session.run(None, HELD_OUT[0])[0]
    got = qir.compile(amp.result.graph, opt_level=0).run(HELD_OUT[0])["y"]
    assert np.abs(got - ref).mean() < 0.02
    with pytest.raises(OptionError, match="target"):
        auto_mixed_precision(cal, metric=mean_abs_error)


def test_max_steps_zero_reports_the_unmet_start(outlier_case):
    _, cal, _ = outlier_case
    amp = auto_mixed_precision(cal, max_steps=0)
    assert not amp.met and amp.chosen == {} and len(amp.history) == 1


def test_report_json_round_trip(outlier_case, tmp_path):
    _, _, report = outlier_case
    extra = TensorReport("exact", "n", "nn.relu", ("src",), "float", math.inf, 0.0, 1.0, 0.0,
                         None, -math.inf, None, None, ("m",), ("tensor.reshape",), False)
    report = AccuracyReport(report.rows + [extra], report.outputs, report.samples)
    assert AccuracyReport.from_json(report.to_json()) == report
    path = tmp_path / "report.json"
    report.save(path)
    loaded = AccuracyReport.load(path)
    assert loaded == report and loaded["exact"].sqnr_db == math.inf
    assert loaded.suggestions().overrides == report.suggestions().overrides
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left behind
    with pytest.raises(QirError, match="not an accuracy report"):
        AccuracyReport.from_json('{"rows": []}')
    with pytest.raises(QirError, match="cannot read"):
        AccuracyReport.load(tmp_path / "missing.json")
    with pytest.raises(QirError, match="does not exist"):
        report.save(tmp_path / "no" / "report.json")


def test_table_renders_rows(outlier_case):
    _, _, report = outlier_case
    console = Console(record=True, width=250)
    console.print(report.table(limit=3))
    text = console.export_text()
    assert "SQNR" in text and "impact" in text and "q_proj" in text
    body = [line for line in text.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in body] == [r.name for r in report.rows[:3]]


def test_unknown_tensor_in_report_is_a_qir_error(outlier_case):
    with pytest.raises(QirError, match="nope"):
        outlier_case[2]["nope"]


def test_digits_w8a8_has_no_badly_quantized_tensor():
    graph = run_passes(qir.load_onnx("examples/digits/digits.onnx"), opt_level=3)
    data = np.load("examples/digits/digits_test.npz")
    x = data["x"]
    cal = calibrate_graph(graph, Config(), [{"input": x[i:i + 16]} for i in range(0, 160, 16)])
    report = compare(cal.graph, cal.lower().graph, {"input": x[160:192]})
    assert len(report.rows) >= 8 and report.rows[-1].name == "input"
    assert all(math.isfinite(r.sqnr_db) and r.sqnr_db > 20 for r in report.rows)
    assert all(r.precision == "int8" for r in report.rows)
    assert report.suggestions(20.0).overrides == {}


def test_quantize_mixed_preset_runs_auto_mixed_precision():
    from qir.passes.quantize.pipeline import quantize

    model = attention_model(1000.0)
    graph = run_passes(qir.load_onnx(model), opt_level=3)
    result = quantize(graph, "mixed", CALIBRATION)
    assert dict(result.config.overrides) == {"ln_out": "int16"}
    assert output_sqnr(model, result.graph, HELD_OUT) > 30
