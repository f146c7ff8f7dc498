"""The kernel-level lowering (qir.lowering.kernels) as data: schedules per ISA, layouts, scratch,
weight slots, fallback reasons. No code is generated here."""

import numpy as np

from qir.ir.graph import Graph
from qir.ir.types import DType, TensorType
from qir.lowering.kernels import NHWC, PLAIN, VectorISA, gemm_schedule, lower_graph

AVX512 = VectorISA("avx512", lanes=16, registers=32)
AVX2 = VectorISA("avx2", lanes=8, registers=16)


def _net():
    rng = np.random.default_rng(0)
    g = Graph("net")
    x = g.add_input("x", TensorType(DType.FLOAT32, (1, 3, 16, 16)))
    w1 = g.add_constant(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w1")
    c1 = g.add_node("fused.conv", [x, w1, None, None], {"pads": [1, 1, 1, 1], "activation": "relu"}, name="c1")
    wd = g.add_constant(rng.standard_normal((64, 1, 3, 3)).astype(np.float32), "wd")
    dw = g.add_node("nn.conv", [c1.output, wd], {"pads": [1, 1, 1, 1], "group": 64}, name="dw")
    w2 = g.add_constant(rng.standard_normal((10, 64, 1, 1)).astype(np.float32), "w2")
    c2 = g.add_node("nn.conv", [dw.output, w2], {}, name="c2")
    top = g.add_node("nn.log_softmax", [c2.output], {"axis": 1}, name="lsm")
    g.outputs.append(top.output)
    return g


def test_tiles_follow_the_register_file():
    assert (gemm_schedule(AVX512, 512).mr, gemm_schedule(AVX512, 512).nr) == (7, 64)  # 28 zmm accumulators
    assert (gemm_schedule(AVX2, 512).mr, gemm_schedule(AVX2, 512).nr) == (6, 16)  # 12 ymm accumulators
    narrow = gemm_schedule(AVX512, 10)  # few output channels: one vector wide, more rows
    assert narrow.nv == 1 and narrow.mr * narrow.nv <= 30


def test_kernels_layouts_and_fallbacks():
    lw = lower_graph(_net(), AVX512)
    assert lw.kernels["c1"].schedule.kind == "direct_nhwc" and lw.kernels["c1"].schedule.pad_copy
    assert lw.kernels["dw"].schedule.kind == "depthwise"
    assert lw.kernels["c2"].schedule.flat_rows  # 1×1, stride 1: pixels as flat GEMM rows
    assert lw.fallback == {"lsm": "no kryo kernel for nn.log_softmax"}
    by = {n.name: n for n in lw.graph.nodes}
    # convs hand NHWC to each other; what the fallback reads is plain
    assert lw.layouts[by["c1"].output.name] == NHWC
    assert lw.layouts[by["dw"].output.name] == NHWC
    assert lw.layouts[by["c2"].output.name] == PLAIN
    # c1 converts its plain input into a zero-haloed NHWC copy; c2 writes NHWC then converts
    assert lw.kernels["c1"].scratch == 18 * 18 * 3 * 4 + 64 - (18 * 18 * 3 * 4) % 64
    assert lw.kernels["c2"].scratch == 16 * 16 * 10 * 4
    assert lw.scratch_size == max(k.scratch for k in lw.kernels.values())
    assert [kind for kind, _ in lw.segments()] == ["kernel", "fallback"]
    # packed weights: [K][nr] panels for the direct convs, one vector row per tap for dw
    assert lw.weights[("c1", "w")].size == 1 * 1 * 9 * 3 * 64
    assert lw.weights[("c2", "w")].size == 64 * 16  # 10 channels: one vector-wide panel, zero-padded
    assert lw.weights[("dw", "w")].size == 9 * 64
    assert all(slot.offset % 16 == 0 for slot in lw.weights.values())  # 64-byte aligned


def test_allow_vetoes_kernels():
    lw = lower_graph(_net(), AVX2, allow=lambda n: n.name != "dw")
    assert lw.fallback["dw"] == "disabled by the caller"
    by = {n.name: n for n in lw.graph.nodes}
    assert lw.layouts[by["c1"].output.name] == PLAIN  # read by a fallback node now
    assert [kind for kind, _ in lw.segments()] == ["kernel", "fallback", "kernel", "fallback"]


def test_symbolic_dims_fall_back_with_a_reason():
    g = Graph("sym")
    x = g.add_input("x", TensorType(DType.FLOAT32, ("N", 4)))
    g.outputs.append(g.add_node("nn.relu", [x], name="r").output)
    lw = lower_graph(g, AVX2)
    assert "not known before run time" in lw.fallback["r"]
