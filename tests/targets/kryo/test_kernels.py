"""Each kryo kernel against the reference interpreter (numpy kernels), on random shapes.

Tolerance: rtol 1e-4, atol 1e-5 with data scaled to O(1) values — FMA and a different
summation order change the last bits, nothing more.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qir.ir.graph import Graph
from qir.ir.interpreter import Interpreter
from qir.ir.types import DType, TensorType
from qir.targets.base import CompileOptions
from qir.targets.kryo import KryoTarget

RTOL, ATOL = 1e-4, 1e-5
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ACTS = [("none", ()), ("relu", ()), ("clip", (0.0, 6.0)), ("leaky_relu", (0.1,)), ("sigmoid", ()),
        ("tanh", ()), ("hard_sigmoid", (0.2, 0.5)), ("hard_swish", ())]


def f32(shape):
    return TensorType(DType.FLOAT32, tuple(shape))


def run_both(g: Graph, feeds: dict, expect_kernels: bool = True, threads: int = 1):
    ref = Interpreter(g).run(feeds)
    tgt = KryoTarget()
    blob = tgt.compile(g, CompileOptions(num_threads=threads))
    exe = tgt.load(blob, CompileOptions(num_threads=threads))
    out = exe.run([feeds[v.name] for v in g.inputs])
    if expect_kernels:
        spec = next(iter(exe._specs.values()))
        assert not spec.lowered.fallback, spec.lowered.fallback
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        np.testing.assert_allclose(o, r, rtol=RTOL, atol=ATOL)
    return exe


def rand(rng, shape, scale=1.0):
    return (rng.uniform(-1, 1, shape) * scale).astype(np.float32)


@st.composite
def conv_cases(draw):
    depthwise = draw(st.booleans())
    cin = draw(st.integers(1, 20))
    if depthwise:
        group, cout = cin, cin
    else:
        group = draw(st.sampled_from([g for g in (1, 2, 3) if cin % g == 0]))
        cout = group * draw(st.integers(1, 20))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pads[0] - pads[2]), 13))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[1] - pads[3]), 13))
    return dict(n=draw(st.integers(1, 2)), cin=cin, cout=cout, group=group, k=(kh, kw), s=(sh, sw),
                d=(dh, dw), pads=pads, h=h, w=w, bias=draw(st.booleans()), residual=draw(st.booleans()),
                act=draw(st.sampled_from(ACTS)), plain_out=draw(st.booleans()))


def build_conv(c, rng):
    g = Graph("conv")
    x = g.add_input("x", f32((c["n"], c["cin"], c["h"], c["w"])))
    fan = c["cin"] // c["group"] * c["k"][0] * c["k"][1]
    w = g.add_constant(rand(rng, (c["cout"], c["cin"] // c["group"], *c["k"]), fan ** -0.5), "w")
    b = g.add_constant(rand(rng, (c["cout"],)), "b") if c["bias"] else None
    attrs = dict(kernel_shape=list(c["k"]), strides=list(c["s"]), dilations=list(c["d"]), pads=c["pads"],
                 group=c["group"], activation=c["act"][0], activation_params=list(c["act"][1]))
    probe = g.add_node("nn.conv", [x, w, b], {k: v for k, v in attrs.items() if not k.startswith("act")})
    res = None
    if c["residual"]:
        # the residual is a second conv-shaped value: computed in the graph (NHWC) or an input (plain)
        r_in = g.add_input("r", probe.output.type)
        res = g.add_node("nn.relu", [r_in]).output
    g.erase_node(probe)
    y = g.add_node("fused.conv", [x, w, b, res], attrs).output
    if not c["plain_out"]:  # a consumer that keeps NHWC: the output is converted at the end
        y = g.add_node("nn.max_pool", [y], {"kernel_shape": [1, 1]}).outputs[0]
    g.outputs.append(y)
    feeds = {"x": rand(rng, (c["n"], c["cin"], c["h"], c["w"]))}
    if c["residual"]:
        feeds["r"] = rand(rng, tuple(probe.output.type.shape))
    return g, feeds


@SETTINGS
@given(case=conv_cases())
def test_conv_matches_reference(isa, case):
    g, feeds = build_conv(case, np.random.default_rng(0))
    run_both(g, feeds)


@st.composite
def gemm_cases(draw):
    return dict(m=draw(st.integers(1, 30)), k=draw(st.integers(1, 70)), n=draw(st.integers(1, 90)),
                trans_b=draw(st.booleans()), c=draw(st.sampled_from(["none", "row", "scalar", "full"])),
                alpha=draw(st.sampled_from([1.0, 0.5])), beta=draw(st.sampled_from([1.0, 2.0])),
                act=draw(st.sampled_from(ACTS)))


@SETTINGS
@given(case=gemm_cases())
def test_gemm_matches_reference(isa, case):
    rng = np.random.default_rng(1)
    m, k, n = case["m"], case["k"], case["n"]
    g = Graph("gemm")
    a = g.add_input("a", f32((m, k)))
    b = g.add_constant(rand(rng, (n, k) if case["trans_b"] else (k, n), k ** -0.5), "b")
    feeds = {"a": rand(rng, (m, k))}
    c = None
    beta = case["beta"]
    if case["c"] == "row":
        c = g.add_constant(rand(rng, (n,)), "c")
    elif case["c"] == "scalar":
        c = g.add_constant(rand(rng, (1,)), "c")
    elif case["c"] == "full":
        c = g.add_input("c", f32((m, n)))
        feeds["c"] = rand(rng, (m, n))
        beta = 1.0
    y = g.add_node("fused.gemm", [a, b, c], {"transB": int(case["trans_b"]), "alpha": case["alpha"],
                                              "beta": beta, "activation": case["act"][0],
                                              "activation_params": list(case["act"][1])}).output
    g.outputs.append(y)
    run_both(g, feeds)


def test_matmul_batched_rows(isa):
    rng = np.random.default_rng(2)
    g = Graph("mm")
    a = g.add_input("a", f32((2, 5, 33)))
    b = g.add_constant(rand(rng, (33, 19), 0.2), "b")
    g.outputs.append(g.add_node("linalg.matmul", [a, b]).output)
    run_both(g, {"a": rand(rng, (2, 5, 33))})


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pads = [draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)),
            draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))]
    return dict(kind=draw(st.sampled_from(["nn.max_pool", "nn.average_pool"])), k=(kh, kw),
                s=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), pads=pads,
                h=draw(st.integers(kh, 12)), w=draw(st.integers(kw, 12)), c=draw(st.integers(1, 37)),
                include=draw(st.integers(0, 1)), after_conv=draw(st.booleans()))


@SETTINGS
@given(case=pool_cases())
def test_pool_matches_reference(isa, case):
    rng = np.random.default_rng(3)
    g = Graph("pool")
    shape = (2, case["c"], case["h"], case["w"])
    x = g.add_input("x", f32(shape))
    if case["after_conv"]:  # NHWC input
        w = g.add_constant(rand(rng, (case["c"], case["c"], 1, 1), 0.3), "w")
        x = g.add_node("nn.conv", [x, w], {}).output
    attrs = {"kernel_shape": list(case["k"]), "strides": list(case["s"]), "pads": case["pads"]}
    if case["kind"] == "nn.average_pool":
        attrs["count_include_pad"] = case["include"]
    g.outputs.append(g.add_node(case["kind"], [x], attrs).outputs[0])
    run_both(g, {"x": rand(rng, shape)})


@pytest.mark.parametrize("op", ["nn.global_average_pool", "nn.global_max_pool"])
def test_global_pool(isa, op):
    rng = np.random.default_rng(4)
    g = Graph("gp")
    x = g.add_input("x", f32((2, 21, 5, 7)))
    w = g.add_constant(rand(rng, (21, 21, 3, 3), 0.1), "w")
    y = g.add_node("nn.conv", [x, w], {"pads": [1, 1, 1, 1]}).output
    g.outputs.append(g.add_node(op, [y]).output)
    run_both(g, {"x": rand(rng, (2, 21, 5, 7))})


UNARY = [("nn.relu", {}), ("nn.sigmoid", {}), ("nn.tanh", {}), ("nn.hard_swish", {}),
         ("nn.leaky_relu", {"alpha": 0.2}), ("nn.hard_sigmoid", {"alpha": 0.3, "beta": 0.4}),
         ("elementwise.neg", {}), ("elementwise.abs", {}), ("elementwise.exp", {})]


@pytest.mark.parametrize("op,attrs", UNARY)
def test_unary(isa, op, attrs):
    rng = np.random.default_rng(5)
    g = Graph("u")
    x = g.add_input("x", f32((3, 5, 7, 3)))
    g.outputs.append(g.add_node(op, [x], attrs).output)
    run_both(g, {"x": rand(rng, (3, 5, 7, 3), 4.0)})


def test_sqrt_and_clip(isa):
    rng = np.random.default_rng(6)
    g = Graph("u")
    x = g.add_input("x", f32((37,)))
    y = g.add_node("elementwise.sqrt", [x]).output
    lo, hi = g.add_constant(np.float32(0.2), "lo"), g.add_constant(np.float32(0.7), "hi")
    g.outputs.append(g.add_node("elementwise.clip", [y, lo, hi]).output)
    run_both(g, {"x": np.abs(rand(rng, (37,)))})


BINARY = ["elementwise.add", "elementwise.sub", "elementwise.mul", "elementwise.div"]
MODES = ["same", "scalar", "channel", "channel_swapped"]


@pytest.mark.parametrize("nhwc", [False, True])
def test_binary(isa, nhwc):
    """Every binary op in every broadcast mode (one graph, one output each), on plain data or
    on NHWC data between convs."""
    rng = np.random.default_rng(7)
    shape = (2, 19, 3, 5)
    g = Graph("b")
    x = g.add_input("x", f32(shape))
    z = g.add_input("z", f32(shape))
    feeds = {"x": rand(rng, shape), "z": rand(rng, shape) + 2.0}
    if nhwc:  # both operands produced by convs, so the ops run on NHWC data
        w = g.add_constant(rand(rng, (19, 19, 1, 1), 0.3), "w")
        x = g.add_node("nn.conv", [x, w], {}).output
        z = g.add_node("nn.conv", [z, w], {}).output
    others = {"same": z, "scalar": g.add_constant(np.float32(1.7), "s"),
              "channel": g.add_constant(rand(rng, (19, 1, 1)) + 2.0, "ch")}
    others["channel_swapped"] = others["channel"]
    results = []
    for op in BINARY:
        for mode in MODES:
            ins = [others[mode], x] if mode == "channel_swapped" else [x, others[mode]]
            node = g.add_node(op, ins)
            y = node.output
            if nhwc:  # keep the result NHWC until a pooling consumer converts it
                y = g.add_node("nn.max_pool", [y], {"kernel_shape": [1, 1]}).outputs[0]
            g.outputs.append(y)
            results.append(node)
    exe = run_both(g, feeds)
    spec = next(iter(exe._specs.values()))
    for node in results:
        assert spec.lowered.layouts[node.output.name] == ("nhwc" if nhwc else "plain")


def test_reshape_copy_and_symbolic_batch(isa):
    rng = np.random.default_rng(8)
    g = Graph("r")
    x = g.add_input("x", TensorType(DType.FLOAT32, ("N", 4, 3, 3)))
    w = g.add_constant(rand(rng, (6, 4, 3, 3), 0.2), "w")
    y = g.add_node("nn.conv", [x, w], {"pads": [1, 1, 1, 1]}).output
    y = g.add_node("tensor.flatten", [y], {"axis": 1}).output
    b = g.add_constant(rand(rng, (54, 5), 0.1), "b")
    g.outputs.append(g.add_node("linalg.matmul", [y, b]).output)
    tgt = KryoTarget()
    exe = tgt.load(tgt.compile(g, CompileOptions()), CompileOptions())
    for n in (1, 3):
        x_ = rand(rng, (n, 4, 3, 3))
        np.testing.assert_allclose(exe.run([x_])[0], Interpreter(g).run({"x": x_})[0], rtol=RTOL, atol=ATOL)
    assert len(exe._specs) == 2


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=conv_cases(), threads=st.sampled_from([2, 3]))
def test_conv_threads_match_reference(case, threads):
    """Threads split (group, panel, row) items and meet at barriers; results stay the same."""
    g, feeds = build_conv(case, np.random.default_rng(9))
    run_both(g, feeds, threads=threads)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_on_every_kernel_kind(threads):
    rng = np.random.default_rng(10)
    g = Graph("mix")
    x = g.add_input("x", f32((1, 8, 30, 30)))
    w1 = g.add_constant(rand(rng, (40, 8, 3, 3), 0.1), "w1")
    y = g.add_node("fused.conv", [x, w1, None, None], {"pads": [1, 1, 1, 1], "activation": "relu"}).output
    wd = g.add_constant(rand(rng, (40, 1, 3, 3), 0.3), "wd")
    y = g.add_node("nn.conv", [y, wd], {"pads": [1, 1, 1, 1], "group": 40}).output
    y = g.add_node("nn.sigmoid", [y]).output  # elementwise, split in chunks
    y = g.add_node("elementwise.mul", [y, g.add_constant(rand(rng, (40, 1, 1)), "s")]).output
    y = g.add_node("nn.average_pool", [y], {"kernel_shape": [2, 2], "strides": [2, 2]}).output
    w2 = g.add_constant(rand(rng, (24, 40, 1, 1), 0.2), "w2")
    y = g.add_node("nn.conv", [y, w2], {}).output  # flat rows: 225 pixels in chunks
    g.outputs.append(y)
    g.outputs.append(g.add_node("nn.global_average_pool", [y]).output)
    run_both(g, {"x": rand(rng, (1, 8, 30, 30))}, threads=threads)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
def test_concat_plain(isa, axis):
    rng = np.random.default_rng(11)
    shapes = [[2, 3, 4, 5], [2, 3, 4, 5], [2, 3, 4, 5]]
    for i, s in enumerate(shapes):
        s[axis] = (2, 5, 1)[i] if axis != -1 else (3, 17, 1)[i]
    g = Graph("cat")
    xs = [g.add_input(f"x{i}", f32(s)) for i, s in enumerate(shapes)]
    g.outputs.append(g.add_node("tensor.concat", xs, {"axis": axis}).output)
    run_both(g, {f"x{i}": rand(rng, s) for i, s in enumerate(shapes)})


@pytest.mark.parametrize("threads", [1, 2])
def test_concat_nhwc_between_convs(isa, threads):
    """Fire-module style: two convs of one input concatenated along channels, then a conv."""
    rng = np.random.default_rng(12)
    g = Graph("fire")
    x = g.add_input("x", f32((2, 6, 9, 9)))
    a = g.add_node("nn.conv", [x, g.add_constant(rand(rng, (5, 6, 1, 1), 0.3), "wa")], {}).output
    b = g.add_node("nn.conv", [x, g.add_constant(rand(rng, (19, 6, 3, 3), 0.1), "wb")],
                   {"pads": [1, 1, 1, 1]}).output
    cat = g.add_node("tensor.concat", [a, b], {"axis": 1})
    y = g.add_node("nn.conv", [cat.output, g.add_constant(rand(rng, (7, 24, 1, 1), 0.2), "wc")], {}).output
    g.outputs.append(y)
    exe = run_both(g, {"x": rand(rng, (2, 6, 9, 9))}, threads=threads)
    assert next(iter(exe._specs.values())).lowered.layouts[cat.output.name] == "nhwc"


@pytest.mark.parametrize("shape", [(3, 37), (2, 4, 128), (5, 1)])
def test_softmax_last_axis(isa, shape):
    rng = np.random.default_rng(13)
    g = Graph("sm")
    x = g.add_input("x", f32(shape))
    g.outputs.append(g.add_node("nn.softmax", [x], {"axis": -1}).output)
    run_both(g, {"x": rand(rng, shape, 5.0)})


def test_softmax_other_axis(isa):
    rng = np.random.default_rng(14)
    g = Graph("sm")
    x = g.add_input("x", f32((3, 4, 5)))
    g.outputs.append(g.add_node("nn.softmax", [x], {"axis": 1}).output)
    run_both(g, {"x": rand(rng, (3, 4, 5))})


@pytest.mark.parametrize("axis,bias", [(-1, True), (-1, False), (1, True)])
def test_layer_norm(isa, axis, bias):
    rng = np.random.default_rng(15)
    shape = (2, 6, 40)
    g = Graph("ln")
    x = g.add_input("x", f32(shape))
    trailing = shape[axis:] if axis > 0 else shape[-1:]
    scale = g.add_constant(rand(rng, trailing) + 1.0, "scale")
    b = g.add_constant(rand(rng, trailing), "b") if bias else None
    node = g.add_node("nn.layer_normalization", [x, scale, b], {"axis": axis, "epsilon": 1e-5})
    g.outputs.append(node.outputs[0])
    run_both(g, {"x": rand(rng, shape, 3.0) + 0.5})


@pytest.mark.parametrize("shape,perm", [((2, 3, 4, 5), (0, 2, 3, 1)), ((2, 3, 4, 5), (3, 1, 0, 2)),
                                        ((1, 4, 3, 1, 5), (0, 2, 1, 4, 3)), ((6, 7), None),
                                        ((2, 3, 4), (0, 1, 2))])
def test_transpose(isa, shape, perm):
    rng = np.random.default_rng(16)
    g = Graph("t")
    x = g.add_input("x", f32(shape))
    g.outputs.append(g.add_node("tensor.transpose", [x], {"perm": None if perm is None else list(perm)}).output)
    run_both(g, {"x": rand(rng, shape)})


@pytest.mark.parametrize("spatial", [1, 2])
def test_conv_on_tiny_maps_with_plain_residual(isa, spatial):
    """1×1 maps (same bytes in NHWC and NCHW: no conversion) and 2×2 maps, plain residual input."""
    rng = np.random.default_rng(17)
    g = Graph("tiny")
    x = g.add_input("x", f32((2, 8, spatial, spatial)))
    r = g.add_input("r", f32((2, 16, spatial, spatial)))
    w = g.add_constant(rand(rng, (16, 8, 1, 1), 0.3), "w")
    y = g.add_node("fused.conv", [x, w, None, r], {"activation": "relu"}).output
    g.outputs.append(y)
    run_both(g, {"x": rand(rng, (2, 8, spatial, spatial)), "r": rand(rng, (2, 16, spatial, spatial))})


@pytest.mark.parametrize("causal,q_len,kv_len,depth,threads", [(0, 7, 9, 20, 1), (1, 12, 12, 16, 2),
                                                                 (1, 5, 3, 8, 1), (0, 1, 33, 3, 3)])
def test_attention(isa, causal, q_len, kv_len, depth, threads):
    rng = np.random.default_rng(18)
    g = Graph("att")
    shapes = {"q": (2, 3, q_len, depth), "k": (2, 3, kv_len, depth), "v": (2, 3, kv_len, depth)}
    ins = [g.add_input(n, f32(s)) for n, s in shapes.items()]
    g.outputs.append(g.add_node("nn.attention", ins, {"is_causal": causal}).outputs[0])
    run_both(g, {n: rand(rng, s, 2.0) for n, s in shapes.items()}, threads=threads)


def test_bias_along_the_last_axis(isa):
    rng = np.random.default_rng(19)
    g = Graph("rowbias")
    x = g.add_input("x", f32((3, 5, 37)))
    y = g.add_node("elementwise.add", [x, g.add_constant(rand(rng, (37,)), "b")]).output
    y = g.add_node("elementwise.div", [g.add_constant(rand(rng, (1, 37)) + 3.0, "d"), y]).output
    g.outputs.append(y)
    run_both(g, {"x": rand(rng, (3, 5, 37))})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_and_erf(isa, approximate):
    rng = np.random.default_rng(20)
    g = Graph("gelu")
    x = g.add_input("x", f32((4, 45)))
    g.outputs.append(g.add_node("nn.gelu", [x], {"approximate": approximate}).output)
    g.outputs.append(g.add_node("elementwise.erf", [x]).output)
    run_both(g, {"x": rand(rng, (4, 45), 4.0)})


def test_split(isa):
    rng = np.random.default_rng(21)
    g = Graph("split")
    x = g.add_input("x", f32((2, 6, 30)))
    node = g.add_node("tensor.split", [x, g.add_constant(np.array([7, 20, 3], np.int64), "sizes")],
                      {"axis": 2}, num_outputs=3)
    g.outputs.extend(node.outputs)
    run_both(g, {"x": rand(rng, (2, 6, 30))})


def test_softmax_over_channels_of_a_1x1_map(isa):
    """SqueezeNet's head: softmax over axis 1 of [N, C, 1, 1] is a last-axis softmax."""
    rng = np.random.default_rng(22)
    g = Graph("sm")
    x = g.add_input("x", f32((2, 30, 1, 1)))
    g.outputs.append(g.add_node("nn.softmax", [x], {"axis": 1}).output)
    run_both(g, {"x": rand(rng, (2, 30, 1, 1), 5.0)})
