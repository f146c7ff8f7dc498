"""The official ONNX node tests of every op the kryo models use, run on target kryo.

The op set is that of the nine light models of the onnx wheel, the digits CNN, and the ResNet-18,
MobileNetV2 and transformer-block models of bench/kryo_vs_ort.py (exported from torch with
``dynamo=False``, opset 17), plus ``Gelu`` and ``Attention``, which the transformer block's GELU and
q·kᵀ-softmax-·v become after -O3 (nn.gelu, nn.attention). A node test is selected when every op
of its model is in that set (so ``*_expanded`` function bodies with other ops are not).

Each test compiles the case's model with ``QirBackend.prepare(model, target="kryo")`` (-O3, then
kryo: generated kernels, reference kernels for nodes kryo declines) and compares every data set
with onnx's own ``assert_similar_outputs`` at the case's tolerances (rtol 1e-3, atol 1e-7).

A case that passes is either *generated* (every node of the optimized graph has a generated
kernel) or *fallback* (at least one node ran its reference kernel). ``FALLBACK`` lists the cases
expected to fall back, with a part of the reason the lowering gives; it is strict both ways, so
the list is the capability table's exceptions: a listed case that gets all its kernels, or an
unlisted case that falls back, fails. ``python -m tests.targets.kryo.test_conformance`` prints the
table as it is now, and the counts.
"""

from __future__ import annotations

import pytest

pytest.importorskip("llvmlite")
onnx_loader = pytest.importorskip("onnx.backend.test.loader")

import qir.targets.kryo  # noqa: E402,F401  (registers the target)
from onnx.backend.test.runner import Runner  # noqa: E402

from qir.onnx_backend import QirBackend  # noqa: E402

#: ONNX op types of the models kryo is measured on (tests/targets/kryo/test_light_models.py checks
#: the light models' and digits' op sets against it; the torch models' were read off their export).
MODEL_OPS = {
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "Div", "Dropout", "Erf", "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LRN",
    "LayerNormalization", "MatMul", "MaxPool", "Mul", "Pow", "Relu", "Reshape", "Softmax", "Split",
    "Sum", "Transpose", "Unsqueeze",
    "Gelu", "Attention",  # what the transformer block's GELU and attention become after -O3
}


def _cases():
    import warnings

    with warnings.catch_warnings():  # generating other ops' cases warns about overflows
        warnings.simplefilter("ignore")
        cases = onnx_loader.load_model_tests(kind="node")
    return [c for c in cases if c.model is not None and c.model.graph.node
            and {n.op_type for n in c.model.graph.node} <= MODEL_OPS]


CASES = _cases()

# Cases that pass through at least one reference kernel, with (part of) the lowering's reason.
FALLBACK: dict[str, str] = {
    "test_add_int8": "%x is i8[3,4,5], kernels are fp32 only",
    "test_add_int16": "%x is i16[3,4,5], kernels are fp32 only",
    "test_add_uint8": "%x is u8[3,4,5], kernels are fp32 only",
    "test_add_uint16": "%x is u16[3,4,5], kernels are fp32 only",
    "test_add_uint32": "%x is u32[3,4,5], kernels are fp32 only",
    "test_add_uint64": "%x is u64[3,4,5], kernels are fp32 only",
    "test_attention_4d_fp16": "%Q is f16[2,3,4,8], kernels are fp32 only",
    "test_attention_4d_with_past_and_present": "KV caches and sequence lengths",
    "test_attention_4d_gqa_with_past_and_present": "KV caches and sequence lengths",
    "test_attention_4d_gqa_with_past_and_present_fp16": "%Q is f16[2,9,4,8], kernels are fp32 only",
    "test_attention_4d_diff_heads_with_past_and_present": "KV caches and sequence lengths",
    "test_attention_4d_diff_heads_with_past_and_present_mask3d": "KV caches and sequence lengths",
    "test_attention_4d_diff_heads_with_past_and_present_mask4d": "KV caches and sequence lengths",
    "test_attention_4d_softcap": "sliding windows or soft-capping",
    "test_attention_4d_gqa_softcap": "sliding windows or soft-capping",
    "test_attention_4d_diff_heads_sizes_softcap": "sliding windows or soft-capping",
    "test_attention_4d_with_qk_matmul": "present_key / present_value / qk outputs are used",
    "test_attention_4d_with_qk_matmul_bias": "present_key / present_value / qk outputs are used",
    "test_attention_4d_with_qk_matmul_softcap": "present_key / present_value / qk outputs are used",
    "test_attention_4d_with_qk_matmul_softmax": "present_key / present_value / qk outputs are used",
    "test_attention_4d_with_past_and_present_qk_matmul_bias": "KV caches and sequence lengths",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask": "KV caches and sequence lengths",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask": "KV caches and sequence lengths",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask_causal": "KV caches and sequence lengths",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask_causal": "KV caches and sequence lengths",
    "test_attention_4d_with_past_and_present_qk_matmul": "KV caches and sequence lengths",
    "test_attention_3d_softcap": "sliding windows or soft-capping",
    "test_attention_3d_gqa_softcap": "sliding windows or soft-capping",
    "test_attention_3d_diff_heads_sizes_softcap": "sliding windows or soft-capping",
    "test_attention_3d_with_past_and_present": "KV caches and sequence lengths",
    "test_attention_3d_gqa_with_past_and_present": "KV caches and sequence lengths",
    "test_attention_3d_diff_heads_with_past_and_present": "KV caches and sequence lengths",
    "test_attention_3d_with_past_and_present_qk_matmul": "KV caches and sequence lengths",
    "test_attention_3d_with_past_and_present_qk_matmul_bias": "KV caches and sequence lengths",
    "test_attention_3d_with_past_and_present_qk_matmul_softcap": "KV caches and sequence lengths",
    "test_attention_3d_with_past_and_present_qk_matmul_softmax": "KV caches and sequence lengths",
    "test_attention_4d_diff_heads_mask4d_padded_kv": "KV caches and sequence lengths",
    "test_attention_4d_causal_bf16": "%Q is bf16[2,3,4,8], kernels are fp32 only",
    "test_attention_4d_causal_fp16": "%Q is f16[2,3,4,8], kernels are fp32 only",
    "test_attention_4d_padded_kv_bf16": "%Q is bf16[2,3,4,8], kernels are fp32 only",
    "test_attention_4d_causal_padded_kv_bf16": "%Q is bf16[2,3,4,8], kernels are fp32 only",
    "test_attention_4d_attn_mask_causal_bf16": "%Q is bf16[2,3,4,8], kernels are fp32 only",
    "test_attention_3d_causal_bf16": "%Q is bf16[2,4,24], kernels are fp32 only",
    "test_attention_4d_softcap_neginf_mask": "sliding windows or soft-capping",
    "test_attention_4d_softcap_neginf_mask_poison": "sliding windows or soft-capping",
    "test_attention_4d_gqa_causal_nonpad_decode": "KV caches and sequence lengths",
    "test_attention_4d_gqa_causal_nonpad_decode_fp16": "%Q is f16[2,4,1,8], kernels are fp32 only",
    "test_attention_4d_causal_nonpad_continued_prefill": "KV caches and sequence lengths",
    "test_attention_4d_causal_with_past_and_present": "KV caches and sequence lengths",
    "test_attention_4d_causal_nonpad_negative_offset_structural_empty": "KV caches and sequence lengths",
    "test_attention_23_fullymasked_qk_matmul_output_mode3_zero": "present_key / present_value / qk outputs are used",
    "test_attention_24_fullymasked_qk_matmul_output_mode3_zero": "present_key / present_value / qk outputs are used",
    "test_attention_24_qk_matmul_output_mode3_softmax_precision": "%Q is f16[1,2,2,8], kernels are fp32 only",
    "test_attention_4d_causal_nonpad_attn_mask_composition": "KV caches and sequence lengths",
    "test_attention_4d_causal_nonpad_batch_prefill": "KV caches and sequence lengths",
    "test_attention_local_window": "sliding windows or soft-capping",
    "test_attention_bidirectional_window": "sliding windows or soft-capping",
    "test_attention_local_window_rank1_boolean_mask": "sliding windows or soft-capping",
    "test_attention_local_window_with_past": "KV caches and sequence lengths",
    "test_attention_local_window_ext_cache_rank3_head_mask": "KV caches and sequence lengths",
    "test_attention_local_window_ext_cache_rank4_batch_mask": "KV caches and sequence lengths",
    "test_attention_local_window_ext_cache_rank2_mask": "KV caches and sequence lengths",
    "test_attention_local_window_ext_cache_float16_mask": "%Q is f16[2,3,4,8], kernels are fp32 only",
    "test_attention_3d_local_window": "sliding windows or soft-capping",
    "test_attention_local_window_gqa_rank4_mask": "present_key / present_value / qk outputs are used",
    "test_averagepool_1d_default": "only 2-D pooling",
    "test_averagepool_3d_default": "only 2-D pooling",
    "test_averagepool_2d_dilations": "dilated pooling",
    "test_averagepool_3d_dilations_small": "only 2-D pooling",
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True": "only 2-D pooling",
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False": "only 2-D pooling",
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True": "only 2-D pooling",
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False": "only 2-D pooling",
    "test_batchnorm_example": "no kryo kernel for nn.batch_normalization",
    "test_batchnorm_epsilon": "no kryo kernel for nn.batch_normalization",
    "test_batchnorm_example_training_mode": "no kryo kernel for nn.batch_normalization",
    "test_batchnorm_epsilon_training_mode": "no kryo kernel for nn.batch_normalization",
    "test_clip_example": "clip bounds are not constant scalars",
    "test_clip": "clip bounds are not constant scalars",
    "test_clip_inbounds": "clip bounds are not constant scalars",
    "test_clip_outbounds": "clip bounds are not constant scalars",
    "test_clip_splitbounds": "clip bounds are not constant scalars",
    "test_clip_min_greater_than_max": "clip bounds are not constant scalars",
    "test_clip_default_min": "clip bounds are not constant scalars",
    "test_clip_default_max": "clip bounds are not constant scalars",
    "test_clip_default_int8_min": "clip bounds are not constant scalars",
    "test_clip_default_int8_max": "clip bounds are not constant scalars",
    "test_constantofshape_float_ones": "no kryo kernel for tensor.constant_of_shape",
    "test_constantofshape_int_zeros": "no kryo kernel for tensor.constant_of_shape",
    "test_constantofshape_int_shape_zero": "no kryo kernel for tensor.constant_of_shape",
    "test_basic_conv_with_padding": "weights are not constant",
    "test_basic_conv_without_padding": "weights are not constant",
    "test_conv_with_strides_padding": "weights are not constant",
    "test_conv_with_strides_no_padding": "weights are not constant",
    "test_conv_with_strides_and_asymmetric_padding": "weights are not constant",
    "test_conv_with_autopad_same": "weights are not constant",
    "test_div_int8": "%x is i8[3,4,5], kernels are fp32 only",
    "test_div_int16": "%x is i16[3,4,5], kernels are fp32 only",
    "test_div_int32_trunc": "%x is i32[4], kernels are fp32 only",
    "test_div_uint8": "%x is u8[3,4,5], kernels are fp32 only",
    "test_div_uint16": "%x is u16[3,4,5], kernels are fp32 only",
    "test_div_uint32": "%x is u32[3,4,5], kernels are fp32 only",
    "test_div_uint64": "%x is u64[3,4,5], kernels are fp32 only",
    "test_dropout_default_mask": "no kryo kernel for nn.dropout",
    "test_dropout_default_mask_ratio": "no kryo kernel for nn.dropout",
    "test_training_dropout_default": "no kryo kernel for nn.dropout",
    "test_training_dropout_default_mask": "no kryo kernel for nn.dropout",
    "test_training_dropout": "no kryo kernel for nn.dropout",
    "test_training_dropout_mask": "no kryo kernel for nn.dropout",
    "test_training_dropout_zero_ratio": "no kryo kernel for nn.dropout",
    "test_training_dropout_zero_ratio_mask": "no kryo kernel for nn.dropout",
    "test_identity_sequence": "%x is seq<f32[*]>, kernels are fp32 only",
    "test_identity_opt": "%opt_in is optional<seq<f32[5]>>, kernels are fp32 only",
    "test_maxpool_with_argmax_2d_precomputed_pads": "max_pool indices are used",
    "test_maxpool_with_argmax_2d_precomputed_strides": "max_pool indices are used",
    "test_maxpool_1d_default": "only 2-D pooling",
    "test_maxpool_3d_default": "only 2-D pooling",
    "test_maxpool_2d_dilations": "dilated pooling",
    "test_maxpool_3d_dilations": "only 2-D pooling",
    "test_maxpool_3d_dilations_use_ref_impl": "only 2-D pooling",
    "test_maxpool_3d_dilations_use_ref_impl_large": "only 2-D pooling",
    "test_mul_int8": "%x is i8[3,4,5], kernels are fp32 only",
    "test_mul_int16": "%x is i16[3,4,5], kernels are fp32 only",
    "test_mul_uint8": "%x is u8[3,4,5], kernels are fp32 only",
    "test_mul_uint16": "%x is u16[3,4,5], kernels are fp32 only",
    "test_mul_uint32": "%x is u32[3,4,5], kernels are fp32 only",
    "test_mul_uint64": "%x is u64[3,4,5], kernels are fp32 only",
    "test_pow_types_float32_int64": "%y is i64[3], kernels are fp32 only",
    "test_pow_types_int64_float32": "%x is i64[3], kernels are fp32 only",
    "test_pow_types_float32_int32": "%y is i32[3], kernels are fp32 only",
    "test_pow_types_int32_float32": "%x is i32[3], kernels are fp32 only",
    "test_pow_types_float32_uint64": "%y is u64[3], kernels are fp32 only",
    "test_pow_types_float32_uint32": "%y is u32[3], kernels are fp32 only",
    "test_pow_types_int64_int64": "%x is i64[3], kernels are fp32 only",
    "test_pow_types_int32_int32": "%x is i32[3], kernels are fp32 only",
    "test_sum_example": "no kryo kernel for elementwise.sum",
    "test_sum_two_inputs": "no kryo kernel for elementwise.sum",
}


def kryo_backend_run(case) -> dict[str, str]:
    """Run every data set of ``case`` on kryo and check it; the fallback reasons by node op."""
    rep = QirBackend.prepare(case.model, target="kryo")
    for inputs, outputs in case.data_sets:
        got = list(rep.run(inputs))
        Runner.assert_similar_outputs(list(outputs), got, rtol=case.rtol, atol=case.atol)
    reasons: dict[str, str] = {}
    for spec in rep.model._executable._specs.values():
        ops = {n.name: n.op for n in spec.graph.nodes}
        for name, why in spec.lowered.fallback.items():
            reasons[f"{ops[name]} {name}"] = why
    return reasons


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case_on_kryo(case):
    reasons = kryo_backend_run(case)
    if case.name in FALLBACK:
        assert reasons, f"{case.name} now gets generated kernels for all its nodes: remove it from FALLBACK"
        assert any(FALLBACK[case.name] in why for why in reasons.values()), reasons
    else:
        assert not reasons, f"{case.name} fell back: {reasons}"


def test_every_model_op_has_cases():
    """Each op of the models has official cases here (a typo in MODEL_OPS would hide them)."""
    covered = {n.op_type for c in CASES for n in c.model.graph.node}
    assert covered == MODEL_OPS


# -- the kernels behind those cases, at sizes the node tests do not reach -------------------------

def _run_both(model, feeds, threads=1):
    """(kryo outputs, onnxruntime's outputs, the kryo specialization) for ``model``."""
    import qir

    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    m = qir.compile(model, target="kryo", num_threads=threads)
    got = list(m.run(feeds).values())
    return got, want, next(iter(m._executable._specs.values()))


def _model(nodes, inputs, outputs, inits=()):
    from onnx import TensorProto, helper

    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    vo = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    graph = helper.make_graph(nodes, "kryo_case", vi, vo, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _lrn_by_the_spec(x, size, alpha, beta, bias):
    """ONNX's LRN definition, channel by channel: the sum over channels
    max(0, c - floor((size-1)/2)) .. min(C-1, c + ceil((size-1)/2))."""
    import math

    import numpy as np

    x = x.astype(np.float64)
    sq = np.zeros_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - math.floor((size - 1) / 2)), min(x.shape[1] - 1, c + math.ceil((size - 1) / 2))
        sq[:, c] = (x[:, lo:hi + 1] ** 2).sum(axis=1)
    return x / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize("beta,size,threads", [(0.75, 5, 1), (0.6, 3, 2), (1.0, 1, 1), (0.75, 4, 1)])
def test_lrn_between_convs_stays_nhwc(isa, beta, size, threads):
    """AlexNet's pattern conv → LRN → max pool: the LRN reads and writes NHWC (no conversion);
    20 channels are a vector and a tail; beta 0.6 takes the pow path, 0.75 the square roots. An
    even size has one more channel after than before; onnxruntime rejects it (and onnx's reference
    evaluator sums only the first N channels), so there the LRN and the pool are computed here
    by the definition on onnxruntime's conv output."""
    import numpy as np
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((20, 3, 3, 3)) * 0.5).astype(np.float32), "w")
    n = helper.make_node
    model = _model([n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
                    n("LRN", ["r"], ["l"], size=size, alpha=1e-2, beta=beta, bias=1.5),
                    n("MaxPool", ["l"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                   [("x", [2, 3, 9, 10])], ["y"], [w])
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32) * 3
    if size % 2:
        got, want, spec = _run_both(model, {"x": x}, threads)
        want = want[0]
    else:
        import qir

        _, conv, _ = _run_both(_model(list(model.graph.node)[:2], [("x", [2, 3, 9, 10])], ["r"], [w]), {"x": x})
        m = qir.compile(model, target="kryo", num_threads=threads)
        got, spec = list(m.run({"x": x}).values()), next(iter(m._executable._specs.values()))
        lrn = _lrn_by_the_spec(conv[0], size, 1e-2, beta, 1.5)[:, :, :8, :]
        want = lrn.reshape(2, 20, 4, 2, 5, 2).max(axis=(3, 5))
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
    assert not spec.lowered.fallback
    lrn = next(nd for nd in spec.graph.nodes if nd.op == "nn.lrn")
    assert spec.lowered.layouts[lrn.inputs[0].name] == spec.lowered.layouts[lrn.output.name] == "nhwc"


@pytest.mark.parametrize("shape,axis", [((3, 37, 5, 19), 1), ((2, 4, 33), 1), ((64, 3), 0)])
def test_softmax_over_inner_axes(isa, shape, axis):
    import numpy as np
    from onnx import helper

    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], [("x", list(shape))], ["y"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 4
    x.reshape(-1)[::7] = -np.inf  # masked entries, as attention scores have
    got, want, spec = _run_both(model, {"x": x}, threads=2)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert not spec.lowered.fallback


def test_matmul_with_computed_b_broadcasts_batches(isa):
    """Batch dims that broadcast on both sides (offset tables), and q·kᵀ as attention computes it."""
    import numpy as np
    from onnx import helper

    n = helper.make_node
    model = _model([n("MatMul", ["a", "b"], ["y"]), n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                    n("MatMul", ["q", "kt"], ["s"])],
                   [("a", [3, 1, 5, 37]), ("b", [1, 2, 37, 21]), ("q", [2, 3, 17, 8]), ("k", [2, 3, 19, 8])],
                   ["y", "s"])
    rng = np.random.default_rng(2)
    feeds = {"a": rng.standard_normal((3, 1, 5, 37)), "b": rng.standard_normal((1, 2, 37, 21)),
             "q": rng.standard_normal((2, 3, 17, 8)), "k": rng.standard_normal((2, 3, 19, 8))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    got, want, spec = _run_both(model, feeds, threads=2)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert not spec.lowered.fallback


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_with_computed_b_constant_c_and_relu(isa, trans_a, trans_b):
    import numpy as np
    from onnx import helper, numpy_helper

    m, k, nn = 13, 40, 35
    rng = np.random.default_rng(3)
    c = numpy_helper.from_array(rng.standard_normal((1, nn)).astype(np.float32), "c")
    model = _model([helper.make_node("Gemm", ["a", "b", "c"], ["g"], alpha=0.5, beta=2.0, transA=trans_a,
                                     transB=trans_b), helper.make_node("Relu", ["g"], ["y"])],
                   [("a", [k, m] if trans_a else [m, k]), ("b", [nn, k] if trans_b else [k, nn])], ["y"], [c])
    feeds = {"a": rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32),
             "b": rng.standard_normal((nn, k) if trans_b else (k, nn)).astype(np.float32)}
    got, want, spec = _run_both(model, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    assert not spec.lowered.fallback


@pytest.mark.parametrize("shape,size", [((2, 21, 5, 7), 4), ((3, 6, 11), 5)])
def test_lrn_on_plain_values_by_the_definition(isa, shape, size):
    """LRN of a graph input (plain layout: channel planes, the window clipped at run time), 3-D
    and 4-D, against the definition computed here (onnxruntime has no even sizes)."""
    import numpy as np
    from onnx import helper

    import qir

    model = _model([helper.make_node("LRN", ["x"], ["y"], size=size, alpha=3e-2, beta=0.75, bias=1.0)],
                   [("x", list(shape))], ["y"])
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32) * 2
    m = qir.compile(model, target="kryo", num_threads=2)
    np.testing.assert_allclose(m.run({"x": x})["y"], _lrn_by_the_spec(x, size, 3e-2, 0.75, 1.0), rtol=1e-5, atol=1e-6)
    assert not next(iter(m._executable._specs.values())).lowered.fallback


ATTENTION_CASES = {
    # q, k, v shapes, mask (dtype, shape) or None, attributes
    "gqa_float_mask_v_depth": ((2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 16), ("float", (1, 4, 5, 7)), {}),
    "bool_mask_2d_long_keys": ((1, 2, 6, 12), (1, 2, 37, 12), (1, 2, 37, 12), ("bool", (6, 37)), {"scale": 0.2}),
    "3d_causal_float_mask": ((2, 9, 24), (2, 9, 24), (2, 9, 24), ("float", (9, 9)),
                             {"is_causal": 1, "q_num_heads": 3, "kv_num_heads": 3}),
    "3d_gqa_bool_head_mask": ((1, 4, 32), (1, 6, 16), (1, 6, 16), ("bool", (4, 4, 6)),
                              {"q_num_heads": 4, "kv_num_heads": 2}),
}


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_attention_masks_heads_and_layouts(isa, name):
    """The Attention kernel with float and bool masks broadcast from 2-D to 4-D, grouped-query
    heads, a value depth other than the key depth and 3-D [batch, seq, heads·depth] inputs, on
    two threads, against onnxruntime (every row keeps an attendable key, as onnxruntime's output
    for fully masked rows differs from ONNX's definition; the node cases cover those)."""
    import numpy as np
    from onnx import TensorProto, helper

    qs, ks, vs, mask, attrs_ = ATTENTION_CASES[name]
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("q", qs), ("k", ks), ("v", vs))}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
              for n, s in (("q", qs), ("k", ks), ("v", vs))]
    names = ["q", "k", "v"]
    if mask is not None:
        kind, shape = mask
        if kind == "bool":
            m = rng.random(shape) > 0.4
            m[..., 0] = True  # every row keeps key 0 (also under the causal mask)
            inputs.append(helper.make_tensor_value_info("m", TensorProto.BOOL, list(shape)))
        else:
            m = (rng.standard_normal(shape) * 2).astype(np.float32)
            m[rng.random(shape) > 0.7] = -np.inf
            m[..., 0] = 0.0
            inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, list(shape)))
        feeds["m"] = m
        names.append("m")
    node = helper.make_node("Attention", names, ["y"], **attrs_)
    graph = helper.make_graph([node], "attention", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    got, want, spec = _run_both(model, feeds, threads=2)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    assert not spec.lowered.fallback, spec.lowered.fallback


if __name__ == "__main__":  # prints FALLBACK as it is now: python -m tests.targets.kryo.test_conformance
    counts = {"generated": 0, "fallback": 0}
    for c in CASES:
        why = kryo_backend_run(c)
        counts["fallback" if why else "generated"] += 1
        if why:
            print(f'    "{c.name}": "{sorted(why.values())[0].split(" (")[0]}",')
    print(f"# {len(CASES)} cases: {counts['generated']} with generated kernels only, {counts['fallback']} via fallback")


def test_constant_operands_read_in_place_fall_back(isa):
    """A constant where a kernel reads an activation in place (MatMul's A, a same-shape Add
    operand) has no address: the node falls back instead of reading a null pointer."""
    import numpy as np
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(6)
    a = numpy_helper.from_array(rng.standard_normal((5, 7)).astype(np.float32), "A")
    n = helper.make_node
    model = _model([n("MatMul", ["A", "b"], ["y"]), n("Add", ["A", "a2"], ["z"])],
                   [("b", [7, 3]), ("a2", [5, 7])], ["y", "z"], [a])
    feeds = {"b": rng.standard_normal((7, 3)).astype(np.float32), "a2": rng.standard_normal((5, 7)).astype(np.float32)}
    got, want, spec = _run_both(model, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert sorted(spec.lowered.fallback.values()) == ["constant %A would be read in place (kernels read only "
                                                      "packed constants)"] * 2
