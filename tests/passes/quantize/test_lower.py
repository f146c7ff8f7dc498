"""The integer lowering, checked node by node against the float ops it replaces.

For every integer node of a quantized graph, its captured integer inputs, weights and bias are
dequantized, the ORIGINAL float op (its own float kernel, from the float graph) runs on them, and
the result is quantized with the output's params: the integer node must agree within 1 LSB (the
requantization's round-half-up, two steps, against one round-half-even of the float product).
This checks the qint kernels, multipliers, shifts, bias scales and clamps without trusting any
of them. End to end: the digits CNN keeps its accuracy; qint kernels match a big-integer model.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import qir
from qir.ir.fixedpoint import quantize_multipliers
from qir.ir.interpreter import Interpreter
from qir.ir.opdef import get_op
from qir.ir.types import DType
from qir.passes import run as run_passes
from qir.passes.quantize import Config, quantize
from qir.passes.quantize.lower import PASS_THROUGH
from qir.passes.quantize.pipeline import prepare
from qir.passes.quantize.params import dequantize_array, quantize_array
from tests.fixedpoint_model import big_int_rule
from tests.passes.strategies import cnn_graphs

DIGITS = "examples/digits/digits.onnx"


def _digits():
    data = np.load("examples/digits/digits_test.npz")
    return run_passes(qir.load_onnx(DIGITS), opt_level=3), data["x"], data["y"]


def _capture(graph, feeds):
    seen = {}
    Interpreter(graph, lambda v, a: seen.__setitem__(v.name, a)).run(feeds)
    return seen


def _quantized_feeds(graph, feeds):
    return {v.name: quantize_array(feeds[v.name], v.type.quant) if v.type.quant else feeds[v.name]
            for v in graph.inputs}


def _real(value, array):
    quant = value.type.quant
    return array if quant is None else dequantize_array(array, quant)


def check_node_by_node(float_graph, qgraph, feeds) -> int:
    """Every qint node (and pass-through op) within 1 LSB of its float op on the same data."""
    float_nodes = {v.name: n for n in float_graph.nodes for v in n.outputs}
    seen = _capture(qgraph, _quantized_feeds(qgraph, feeds))
    checked = 0
    for node in qgraph.nodes:
        if not (node.op.startswith("qint.") or node.op in PASS_THROUGH) or node.output.type.quant is None:
            continue
        original = float_nodes.get(node.output.name)
        if original is None or node.op == "qint.lookup":
            continue
        reals = {}
        for v in node.inputs:
            if v is not None:
                reals[v.name] = _real(v, v.const if v.const is not None else seen[v.name])
        args = _float_args(original, node, reals, seen)
        opdef = get_op(original.op)
        want = opdef.kernel(*args, **opdef.resolve_attrs(original.attrs))
        want = want[0] if isinstance(want, tuple) else want
        expected = quantize_array(np.asarray(want, np.float64), node.output.type.quant).astype(np.int64)
        got = seen[node.output.name].astype(np.int64)
        assert got.shape == expected.shape, node.name
        diff = np.abs(got - expected).max(initial=0)
        assert diff <= 1, f"{node.name} ({node.op} for {original.op}): {diff} LSB off"
        checked += 1
    return checked


def _float_args(original, node, reals, seen):
    """The float op's inputs: the integer node's data, dequantized, in the float op's order."""
    q_inputs = [v for v in node.inputs]
    if node.op == "qint.conv":
        x, w, _, _, b = (q_inputs + [None] * 5)[:5]
        return [reals[x.name], reals[w.name], None if b is None else reals[b.name]]
    if node.op == "qint.matmul":
        a, b_, _, _, bias = (q_inputs + [None] * 5)[:5]
        if original.op in ("linalg.gemm", "fused.gemm"):
            at = get_op(original.op).resolve_attrs(original.attrs)
            weights = reals[b_.name].T if at["transB"] else reals[b_.name]
            c = None
            if bias is not None:
                c = reals[bias.name] * (at["alpha"] / at["beta"] if at["beta"] else 0.0)
            return [reals[a.name], weights, c]
        return [reals[a.name], reals[b_.name]]
    # Everything else: the float op's data inputs are the integer node's, other inputs as they are.
    args = []
    for i, v in enumerate(original.inputs):
        if v is None:
            args.append(None)
        elif i < len(q_inputs) and q_inputs[i] is not None and q_inputs[i].name in reals:
            args.append(reals[q_inputs[i].name])
        else:
            args.append(v.const if v.const is not None else seen.get(v.name))
    return args


def test_digits_w8a8_keeps_accuracy_and_each_node_is_within_one_lsb():
    graph, x, y = _digits()
    result = quantize(graph, "int8", [{"input": x[i:i + 32]} for i in range(0, 160, 32)])
    assert not result.float_ops
    assert {n.op for n in result.graph.nodes} >= {"qint.conv", "qint.matmul", "nn.max_pool"}
    float_acc = (qir.compile(graph, opt_level=0).run({"input": x})["logits"].argmax(1) == y).mean()
    m = qir.compile(result.graph, opt_level=0)
    quant_acc = (m.run({"input": x})["logits"].argmax(1) == y).mean()
    assert quant_acc >= float_acc - 0.01
    assert check_node_by_node(graph, result.graph, {"input": x[:40]}) == 7


@pytest.mark.parametrize("preset", ["a16w8", "fp16"])
def test_digits_other_schemes(preset):
    graph, x, y = _digits()
    result = quantize(graph, preset, [{"input": x[:64]}])
    out = qir.compile(result.graph, opt_level=0).run({"input": x})["logits"]
    ref = qir.compile(graph, opt_level=0).run({"input": x})["logits"]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum())
    assert sqnr > 40, sqnr
    if preset == "a16w8":
        assert check_node_by_node(graph, result.graph, {"input": x[:40]}) == 7


def test_float_override_keeps_an_op_in_float():
    graph, x, _ = _digits()
    result = quantize(graph, Config(overrides={"nn.max_pool": "float"}), [{"input": x[:64]}])
    assert result.float_ops == {"nn.max_pool": 2}
    assert sum(n.op == "nn.max_pool" and n.output.type.dtype == DType.FLOAT32
               for n in result.graph.nodes) == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cnn_graphs(max_blocks=4), st.sampled_from([8, 16]))
def test_random_cnns_node_by_node(case, bits):
    """Random conv/pool/concat/residual/activation graphs: each integer node within 1 LSB."""
    graph = run_passes(case.graph, opt_level=3)
    # The float ops to compare with are those the lowering saw: fused convs with a residual or
    # a non-clamp epilogue are split first (quantize would do it on its own copy).
    prepare(graph)
    result = quantize(graph, Config(act_bitwidth=bits), [case.feeds])
    check_node_by_node(graph, result.graph, case.feeds)
    out = qir.compile(result.graph, opt_level=0).run(case.feeds)
    assert set(out) == {v.name for v in graph.outputs}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(3, 6), st.integers(1, 3),
       st.sampled_from([1, 2]), st.integers(0, 1), st.data())
def test_qint_conv_matches_big_integer_model(groups, cin_g, size, k, stride, pad, data):
    """qint.conv (float64 sums, split multiply) against Python big-int loops of the rule."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    cout_g = data.draw(st.integers(1, 3))
    x = rng.integers(0, 256, (1, groups * cin_g, size, size)).astype(np.uint8)
    w = rng.integers(-127, 128, (groups * cout_g, cin_g, k, k)).astype(np.int8)
    b = rng.integers(-5000, 5000, groups * cout_g).astype(np.int32)
    m, s = quantize_multipliers(rng.uniform(1e-4, 0.05, groups * cout_g))
    zx, zy = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    attrs = dict(auto_pad="NOTSET", dilations=(1, 1), group=groups, kernel_shape=(k, k),
                 pads=(pad,) * 4, strides=(stride, stride), x_zero_point=zx, y_zero_point=zy,
                 y_min=None, y_max=None, output_dtype=DType.UINT8)
    got = get_op("qint.conv").kernel(x, w, m, s, b, None, **attrs)
    xp = np.pad(x.astype(object) - zx, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    out = (size + 2 * pad - k) // stride + 1
    for co in range(groups * cout_g):
        g = co // cout_g
        for i in range(out):
            for j in range(out):
                acc = int(b[co])
                for ci in range(cin_g):
                    for di in range(k):
                        for dj in range(k):
                            acc += int(xp[0, g * cin_g + ci, i * stride + di, j * stride + dj]) * int(w[co, ci, di, dj])
                want = min(255, max(0, zy + big_int_rule(acc, int(m[co]), int(s[co]))))
                assert got[0, co, i, j] == want


def test_headroom_makes_averages_round_once():
    """Without headroom a 2×2 average by 1/4 rounds twice (605/4: 302.5 → 303 → 152); with the
    lowering's left shift the result is the single round-half-up of the exact average."""
    from qir.passes.quantize.lower import average_shift

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 8, 16, 16)).astype(np.uint8)
    attrs = dict(auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=(), kernel_shape=(2, 2),
                 pads=(0, 0, 0, 0), strides=(2, 2), x_zero_point=0, scale_ratio=1.0, y_zero_point=0,
                 y_min=None, y_max=None, output_dtype=DType.UINT8)
    sums = x.astype(np.int64).reshape(1, 8, 8, 2, 8, 2).sum(axis=(3, 5))
    exact = (sums * 2 + 4) // 8  # round half up of sums / 4
    kernel = get_op("qint.average_pool").kernel
    twice = kernel(x, left_shift=0, **attrs)
    once = kernel(x, left_shift=average_shift(8, 4), **attrs)
    assert (twice != exact).mean() > 0.05  # the double rounding the headroom is for
    np.testing.assert_array_equal(once, exact)
