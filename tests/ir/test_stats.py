"""Model statistics: MAC rules, parameter counts, unknown and symbolic shapes."""

import numpy as np

from qir.ir.graph import Graph
from qir.ir.stats import MAC_RULES, model_stats
from qir.ir.types import DType, TensorType

F32 = DType.FLOAT32


def t(*shape):
    return TensorType(F32, shape)


def conv_graph(batch="N", groups=1):
    g = Graph("convnet")
    x = g.add_input("x", t(batch, 4, 8, 8))
    w = g.add_constant(np.zeros((6, 4 // groups, 3, 3), np.float32), "w")
    b = g.add_constant(np.zeros(6, np.float32), "b")
    c = g.add_node("nn.conv", [x, w, b], {"group": groups}, name="conv",
                   output_types=[t(batch, 6, 6, 6)])
    r = g.add_node("nn.relu", [c.output], name="relu", output_types=[t(batch, 6, 6, 6)])
    g.outputs.append(r.output)
    return g


def test_conv_macs_and_flops():
    s = model_stats(conv_graph(batch=2))
    conv, relu = s.nodes
    assert conv.macs == 2 * 6 * 6 * 6 * 4 * 3 * 3
    assert conv.flops == 2 * conv.macs + 2 * 6 * 6 * 6  # bias: one add per output element
    assert relu.macs == 0 and relu.flops == 2 * 6 * 6 * 6
    assert s.total_macs == conv.macs and s.total_flops == conv.flops + relu.flops
    assert s.num_params == 6 * 4 * 9 + 6 and s.param_bytes == 4 * s.num_params
    assert s.op_counts == {"nn.conv": 1, "nn.relu": 1}
    assert s.assumed_symbols == ()


def test_grouped_conv_counts_cin_over_groups():
    s = model_stats(conv_graph(batch=1, groups=2))
    assert s.nodes[0].macs == 6 * 6 * 6 * 2 * 3 * 3


def test_symbolic_dims_count_as_one_and_are_reported():
    s = model_stats(conv_graph())
    assert s.assumed_symbols == ("N",)
    assert s.nodes[0].macs == 6 * 6 * 6 * 4 * 9
    unknown = model_stats(conv_graph(), symbol_value=None)
    assert unknown.unknown_nodes == 2 and unknown.total_macs == 0
    assert unknown.by_op()["nn.conv"] == (1, None, None)


def test_gemm_matmul_conv_transpose():
    g = Graph()
    a = g.add_input("a", t(5, 7))
    b = g.add_constant(np.ones((3, 7), np.float32), "b")
    gemm = g.add_node("linalg.gemm", [a, b], {"transB": 1}, output_types=[t(5, 3)])
    ta = g.add_input("ta", t(7, 5))
    gemm_t = g.add_node("linalg.gemm", [ta, b], {"transA": 1, "transB": 1}, output_types=[t(5, 3)])
    m = g.add_node("linalg.matmul", [g.add_input("x", t(2, 4, 5, 7)), g.add_input("y", t(7, 3))],
                   output_types=[t(2, 4, 5, 3)])
    w = g.add_constant(np.ones((4, 2, 3, 3), np.float32), "wt")  # [Cin, Cout/groups, k, k]
    ct = g.add_node("nn.conv_transpose", [g.add_input("z", t(1, 4, 5, 5)), w],
                    output_types=[t(1, 2, 7, 7)])
    g.outputs += [gemm.output, gemm_t.output, m.output, ct.output]
    by_name = {n.name: n for n in model_stats(g).nodes}
    assert by_name[gemm.name].macs == 5 * 3 * 7 and by_name[gemm.name].flops == 2 * 5 * 3 * 7
    assert by_name[gemm_t.name].macs == 5 * 3 * 7
    assert by_name[m.name].macs == 2 * 4 * 5 * 3 * 7
    assert by_name[ct.name].macs == 4 * 5 * 5 * 2 * 3 * 3


def test_unknown_shapes_are_unknown_not_zero():
    g = Graph()
    x = g.add_input("x", TensorType(F32, None))
    n = g.add_node("nn.relu", [x], output_types=[TensorType(F32, None)])
    g.outputs.append(n.output)
    s = model_stats(g)
    assert s.nodes[0].flops is None and s.unknown_nodes == 1


def test_registry_has_the_mac_ops():
    assert {"nn.conv", "nn.conv_transpose", "linalg.matmul", "linalg.gemm"} <= set(MAC_RULES)
