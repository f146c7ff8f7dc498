"""The kryo integer kernels (qint ops) BIT-EXACT against the reference interpreter.

Each case runs on every vector ISA the host has (``isa`` fixture: AVX-512, where the host has
VNNI the ``vpdpbusd`` path, and AVX2, the exact ``vpmaddwd`` widening path). Random parameters
include the rounding edge cases: large shifts (≥ 32: the result is 0 / the zero point), shift 0,
ties (accumulators at exact halves), negative accumulators, clamps, left shifts of the
element-wise ops. End to end: the digits CNN and a MobileNet-style model quantized to int8 run
with no fallback node and equal the interpreter bit for bit.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import qir
from qir.ir.graph import Graph
from qir.ir.interpreter import Interpreter
from qir.ir.types import DType, TensorType
from qir.targets.base import CompileOptions
from qir.targets.kryo import KryoTarget
from qir.targets.kryo.codegen_int8 import use_vnni
from qir.targets.kryo.host import host

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def t(dtype, shape):
    return TensorType(dtype, tuple(shape))


def run_both(g: Graph, feeds: dict, threads: int = 1):
    """Outputs of the interpreter and of kryo code (with no fallback node) must be identical."""
    ref = Interpreter(g).run(feeds)
    tgt = KryoTarget()
    exe = tgt.load(tgt.compile(g, CompileOptions(num_threads=threads)), CompileOptions(num_threads=threads))
    out = exe.run([feeds[v.name] for v in g.inputs])
    spec = next(iter(exe._specs.values()))
    assert not spec.lowered.fallback, spec.lowered.fallback
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype
        np.testing.assert_array_equal(o, r)
    return exe


def requant_params(rng, m: int, max_shift: int = 40):
    """Per-channel multipliers in [2^30, 2^31) (some exactly 2^30: ties) and shifts 0..max_shift."""
    mult = rng.integers(1 << 30, (1 << 31) - 1, m, endpoint=True)
    mult[rng.random(m) < 0.25] = 1 << 30
    shift = rng.integers(0, max_shift, m, endpoint=True)
    return mult.astype(np.int32), shift.astype(np.int32)


@st.composite
def conv_cases(draw):
    depthwise = draw(st.booleans())
    cin = draw(st.integers(1, 24))
    if depthwise:
        group, cout = max(cin, 2), max(cin, 2)
        cin = group
    else:
        group = draw(st.sampled_from([g for g in (1, 2, 3) if cin % g == 0]))
        cout = group * draw(st.integers(1, 40))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pads[0] - pads[2]), 11))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[1] - pads[3]), 11))
    return dict(n=draw(st.integers(1, 2)), cin=cin, cout=cout, group=group, k=(kh, kw), s=(sh, sw),
                d=(dh, dw), pads=pads, h=h, w=w, bias=draw(st.booleans()), zx=draw(st.integers(0, 255)),
                zy=draw(st.integers(0, 255)), signed_out=draw(st.booleans()),
                clamp=draw(st.sampled_from([None, (0, 255), (40, 200)])),
                per_tensor=draw(st.booleans()), max_shift=draw(st.sampled_from([8, 14, 40])),
                seed=draw(st.integers(0, 2**16)))


def _out_attrs(c):
    out = DType.INT8 if c["signed_out"] else DType.UINT8
    zy = c["zy"] - 128 if c["signed_out"] else c["zy"]
    a = {"y_zero_point": zy, "output_dtype": out}
    if c["clamp"] is not None:
        lo, hi = c["clamp"]
        a.update(y_min=lo - 128 if c["signed_out"] else lo, y_max=hi - 128 if c["signed_out"] else hi)
    return a


def _weights_and_params(g, rng, c, m, wshape):
    w = g.add_constant(rng.integers(-127, 127, wshape, endpoint=True).astype(np.int8), "w")
    mult, shift = requant_params(rng, 1 if c["per_tensor"] else m, c["max_shift"])
    mv, sv = g.add_constant(mult, "m"), g.add_constant(shift, "s")
    b = g.add_constant(rng.integers(-5000, 5000, m).astype(np.int32), "b") if c["bias"] else None
    return w, mv, sv, b


@SETTINGS
@given(case=conv_cases())
def test_qconv_bit_exact(isa, case):
    c, rng = case, np.random.default_rng(case["seed"])
    g = Graph("qconv")
    x = g.add_input("x", t(DType.UINT8, (c["n"], c["cin"], c["h"], c["w"])))
    w, mv, sv, b = _weights_and_params(g, rng, c, c["cout"], (c["cout"], c["cin"] // c["group"], *c["k"]))
    attrs = dict(kernel_shape=list(c["k"]), strides=list(c["s"]), dilations=list(c["d"]), pads=c["pads"],
                 group=c["group"], x_zero_point=c["zx"], **_out_attrs(c))
    g.outputs.append(g.add_node("qint.conv", [x, w, mv, sv, b], attrs).output)
    run_both(g, {"x": rng.integers(0, 255, (c["n"], c["cin"], c["h"], c["w"]), endpoint=True).astype(np.uint8)})


@SETTINGS
@given(case=conv_cases(), c_mult=st.sampled_from([1, 16]))
def test_qconv_chain_nhwc_bit_exact(isa, case, c_mult):
    """conv 1×1 → the drawn conv → conv 1×1: the middle conv reads and writes NHWC in the arena
    (depthwise in place with border checks, others through the haloed staging copy)."""
    c, rng = dict(case), np.random.default_rng(case["seed"])
    cin = c["cin"] * c_mult if c["group"] == c["cin"] else c["cin"]
    if c["group"] == c["cin"]:
        c.update(cin=cin, cout=cin, group=cin)
    shape = (c["n"], 5, c["h"], c["w"])
    g = Graph("chain")
    x = g.add_input("x", t(DType.UINT8, shape))
    mult, shift = requant_params(rng, cin, 12)
    w0 = g.add_constant(rng.integers(-127, 127, (cin, 5, 1, 1), endpoint=True).astype(np.int8), "w0")
    h = g.add_node("qint.conv", [x, w0, g.add_constant(mult, "m0"), g.add_constant(shift, "s0")],
                   {"kernel_shape": [1, 1], "x_zero_point": 9, "y_zero_point": c["zx"]}).output
    w, mv, sv, b = _weights_and_params(g, rng, dict(c, signed_out=False), c["cout"],
                                       (c["cout"], cin // c["group"], *c["k"]))
    attrs = dict(kernel_shape=list(c["k"]), strides=list(c["s"]), dilations=list(c["d"]), pads=c["pads"],
                 group=c["group"], x_zero_point=c["zx"], **_out_attrs(dict(c, signed_out=False)))
    mid = g.add_node("qint.conv", [h, w, mv, sv, b], attrs).output
    mult2, shift2 = requant_params(rng, 3, 12)
    w2 = g.add_constant(rng.integers(-127, 127, (3, c["cout"], 1, 1), endpoint=True).astype(np.int8), "w2")
    g.outputs.append(g.add_node("qint.conv", [mid, w2, g.add_constant(mult2, "m2"),
                                              g.add_constant(shift2, "s2")],
                                {"kernel_shape": [1, 1], "x_zero_point": c["zy"]}).output)
    exe = run_both(g, {"x": rng.integers(0, 255, shape, endpoint=True).astype(np.uint8)})
    spec = next(iter(exe._specs.values()))
    assert spec.lowered.layouts[mid.name] == "nhwc"


@st.composite
def matmul_cases(draw):
    return dict(rows=draw(st.lists(st.integers(1, 9), min_size=1, max_size=2)), k=draw(st.integers(1, 300)),
                n=draw(st.integers(1, 80)), bias=draw(st.booleans()), zx=draw(st.integers(0, 255)),
                zy=draw(st.integers(0, 255)), signed_out=draw(st.booleans()),
                clamp=draw(st.sampled_from([None, (0, 255), (40, 200)])), per_tensor=draw(st.booleans()),
                max_shift=draw(st.sampled_from([8, 14, 40])), seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(case=matmul_cases())
def test_qmatmul_bit_exact(isa, case):
    c, rng = case, np.random.default_rng(case["seed"])
    g = Graph("qmatmul")
    shape = (*c["rows"], c["k"])
    a = g.add_input("a", t(DType.UINT8, shape))
    w, mv, sv, b = _weights_and_params(g, rng, c, c["n"], (c["k"], c["n"]))
    attrs = {"a_zero_point": c["zx"], **_out_attrs(c)}
    g.outputs.append(g.add_node("qint.matmul", [a, w, mv, sv, b], attrs).output)
    run_both(g, {"a": rng.integers(0, 255, shape, endpoint=True).astype(np.uint8)})


def test_requant_rounding_edges(isa):
    """Accumulators at exact ties (±k·2^(s−1)), negative ones, shift 0, shift ≥ 32, M = 2^30:
    a 1×1 conv with one input channel and weight 1 makes acc = x − zx + b, chosen exactly."""
    g = Graph("edges")
    x = g.add_input("x", t(DType.UINT8, (1, 1, 1, 256)))
    shifts = np.array([0, 1, 2, 3, 7, 8, 16, 30, 31, 32, 33, 62], np.int32)
    m = shifts.size
    w = g.add_constant(np.ones((m, 1, 1, 1), np.int8), "w")
    mult = np.full(m, 1 << 30, np.int32)  # factor 2^-(1+shift): every odd accumulator is a tie at shift 0
    b = g.add_constant((np.arange(m) * -37).astype(np.int32), "b")
    y = g.add_node("qint.conv", [x, w, g.add_constant(mult, "m"), g.add_constant(shifts, "s"), b],
                   {"kernel_shape": [1, 1], "x_zero_point": 128, "y_zero_point": 100,
                    "output_dtype": DType.UINT8}).output
    g.outputs.append(y)
    run_both(g, {"x": np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 256)})


def test_left_shift_conv_falls_back(isa):
    """A factor ≥ 1 (negative shift) is not done by the i32 epilogue: the node falls back, and
    the report says why (correct, only slower)."""
    g = Graph("left")
    x = g.add_input("x", t(DType.UINT8, (1, 2, 3, 3)))
    w = g.add_constant(np.ones((2, 2, 1, 1), np.int8), "w")
    y = g.add_node("qint.conv", [x, w, g.add_constant(np.array([1 << 30], np.int32), "m"),
                                 g.add_constant(np.array([-2], np.int32), "s")],
                   {"kernel_shape": [1, 1]}).output
    g.outputs.append(y)
    tgt = KryoTarget()
    exe = tgt.load(tgt.compile(g, CompileOptions()), CompileOptions())
    feeds = {"x": np.arange(18, dtype=np.uint8).reshape(1, 2, 3, 3)}
    np.testing.assert_array_equal(exe.run([feeds["x"]])[0], Interpreter(g).run(feeds)[0])
    assert "left shift" in exe.report()


INT_TYPES = [DType.UINT8, DType.INT8, DType.UINT16, DType.INT16]


def _rand_int(rng, dtype, shape):
    info = np.iinfo(dtype.numpy)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype.numpy)


@st.composite
def eltwise_cases(draw):
    return dict(op=draw(st.sampled_from(["qint.add", "qint.mul", "qint.requantize"])),
                shape=tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))),
                a_t=draw(st.sampled_from(INT_TYPES[:2])), b_t=draw(st.sampled_from(INT_TYPES[:2])),
                out_t=draw(st.sampled_from(INT_TYPES)), shift=draw(st.integers(-3, 45)),
                left=draw(st.sampled_from([0, 1, 14, 20])), seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(case=eltwise_cases())
def test_qeltwise_bit_exact(isa, case):
    c, rng = case, np.random.default_rng(case["seed"])
    g = Graph("qelt")
    lo, hi = np.iinfo(c["out_t"].numpy).min, np.iinfo(c["out_t"].numpy).max
    attrs = {"multiplier": int(rng.integers(1 << 30, 1 << 31)), "shift": c["shift"],
             "y_zero_point": int(rng.integers(lo, hi)), "output_dtype": c["out_t"]}
    feeds = {"a": _rand_int(rng, c["a_t"], c["shape"])}
    ins = [g.add_input("a", t(c["a_t"], c["shape"]))]
    if c["op"] == "qint.requantize":
        attrs.update(x_zero_point=int(rng.integers(-128, 256)), left_shift=c["left"])
    else:
        ins.append(g.add_input("b", t(c["b_t"], c["shape"])))
        feeds["b"] = _rand_int(rng, c["b_t"], c["shape"])
        attrs.update(a_zero_point=int(rng.integers(-128, 256)), b_zero_point=int(rng.integers(-128, 256)))
    if c["op"] == "qint.add":
        attrs.update(left_shift=c["left"], a_multiplier=int(rng.integers(1 << 30, 1 << 31)),
                     b_multiplier=int(rng.integers(1 << 30, 1 << 31)), a_shift=int(rng.integers(-1, 8)),
                     b_shift=int(rng.integers(0, 8)))
    g.outputs.append(g.add_node(c["op"], ins, attrs).output)
    run_both(g, feeds)


@pytest.mark.parametrize("op", ["mean", "pool"])
@pytest.mark.parametrize("dtype", [DType.UINT8, DType.INT16])
def test_qmean_bit_exact(isa, op, dtype):
    rng = np.random.default_rng(5)
    shape = (2, 19, 7, 5)
    g = Graph("qmean")
    x = g.add_input("x", t(dtype, shape))
    attrs = {"x_zero_point": 3, "scale_ratio": 0.37, "left_shift": 7, "y_zero_point": 11,
             "output_dtype": DType.UINT8}
    if op == "mean":
        y = g.add_node("qint.mean", [x, g.add_constant(np.array([2, 3], np.int64), "axes")],
                       {"keepdims": 1, **attrs}).output
    else:
        y = g.add_node("qint.average_pool", [x], {"kernel_shape": [7, 5], **attrs}).output
    g.outputs.append(y)
    run_both(g, {"x": _rand_int(rng, dtype, shape)})


@pytest.mark.parametrize("dtype", [DType.UINT8, DType.INT8, DType.INT16])
def test_qlookup_maxpool_copy_bit_exact(isa, dtype):
    rng = np.random.default_rng(6)
    shape = (2, 3, 9, 7)
    g = Graph("qmisc")
    x = g.add_input("x", t(dtype, shape))
    table = _rand_int(rng, DType.UINT8, (1 << (8 * dtype.numpy.itemsize),))
    looked = g.add_node("qint.lookup", [x, g.add_constant(table, "table")]).output
    lo, hi = np.array(30, table.dtype), np.array(200, table.dtype)
    looked = g.add_node("elementwise.clip", [looked, g.add_constant(lo, "lo"), g.add_constant(hi, "hi")]).output
    pooled = g.add_node("nn.max_pool", [looked], {"kernel_shape": [3, 2], "strides": [2, 2],
                                                   "pads": [1, 0, 1, 1]}).outputs[0]
    flat = g.add_node("tensor.flatten", [pooled], {"axis": 1}).output
    gmax = g.add_node("nn.global_max_pool", [x]).output
    cat = g.add_node("tensor.concat", [x, g.add_node("tensor.identity", [x]).output, x], {"axis": 2}).output
    g.outputs.extend([flat, gmax, cat])
    run_both(g, {"x": _rand_int(rng, dtype, shape)})


def test_threads_bit_exact(isa):
    rng = np.random.default_rng(7)
    g = Graph("qconv2")
    x = g.add_input("x", t(DType.UINT8, (1, 8, 9, 9)))
    w = g.add_constant(rng.integers(-127, 127, (40, 8, 3, 3), endpoint=True).astype(np.int8), "w")
    mult, shift = requant_params(rng, 40, 12)
    y = g.add_node("qint.conv", [x, w, g.add_constant(mult, "m"), g.add_constant(shift, "s")],
                   {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "x_zero_point": 7}).output
    g.outputs.append(y)
    run_both(g, {"x": rng.integers(0, 255, (1, 8, 9, 9), endpoint=True).astype(np.uint8)}, threads=2)


def test_dot_product_path(isa):
    """Which u8·s8 path this ISA takes: VNNI on AVX-512 hosts that have it, widening otherwise."""
    h = host()
    assert use_vnni(h) == (h.isa.name == "avx512" and "+avx512vnni" in h.features.split(","))
    if isa == "avx2":
        assert not use_vnni(h)


# -- whole models ----------------------------------------------------------------------------

def _assert_model_bit_exact(m, feeds):
    """A quantized CompiledModel on kryo: no fallback, integer outputs equal the interpreter's."""
    g = m.graph
    exe = m.executable
    arrays = [feeds[v.name] for v in g.inputs]
    out = exe.run(arrays)
    report = exe.report()
    assert "0 fallback nodes" in report, report
    ref = Interpreter(g).run({v.name: a for v, a in zip(g.inputs, arrays)})
    for o, r in zip(out, ref):
        np.testing.assert_array_equal(o, r)


def _quantized_feed(g, x):
    from qir.passes.quantize.params import quantize_array

    v = g.inputs[0]
    return {v.name: quantize_array(x, v.type.quant)}


def test_digits_int8_bit_exact(isa):
    data = np.load("examples/digits/digits_test.npz")
    calib = [{"input": data["x"][i:i + 16]} for i in range(0, 64, 16)]
    m = qir.compile("examples/digits/digits.onnx", target="kryo", quantize="int8", calibration=calib)
    _assert_model_bit_exact(m, _quantized_feed(m.graph, data["x"][:40]))
    logits = m.run({"input": data["x"][:200]})["logits"]
    assert (logits.argmax(1) == data["y"][:200]).mean() > 0.9


def _mobilenet_block_onnx(path):
    """A MobileNetV2-style float model: conv 3×3/2 + ReLU6, inverted residual (1×1 expand,
    depthwise 3×3, 1×1 project, residual add, ReLU), max pool, grouped conv, global average
    pool, linear classifier."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
            self.expand = nn.Sequential(nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, 1, 1, groups=48), nn.BatchNorm2d(48), nn.ReLU6())
            self.project = nn.Sequential(nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16))
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, groups=16), nn.Conv2d(32, 32, 1), nn.ReLU6())
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.project(self.dw(self.expand(x))))  # u8 clip, NHWC
            x = self.down(torch.nn.functional.max_pool2d(x, 3, 1, 1))  # u8 max pool, NHWC
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.randn(8, 3, 32, 32))
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)


def test_mobilenet_style_int8_bit_exact(isa, tmp_path):
    path = tmp_path / "mb.onnx"
    _mobilenet_block_onnx(path)
    rng = np.random.default_rng(8)
    calib = [{"x": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)} for _ in range(3)]
    m = qir.compile(str(path), target="kryo", quantize="int8", calibration=calib)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    _assert_model_bit_exact(m, _quantized_feed(m.graph, x))


def test_digits_a16w8_runs_exact_with_conv_fallbacks(isa):
    """A16W8: 16-bit activations are not done by the u8 GEMMs yet (their reference kernels run,
    with a reason in the report); everything else is generated; the result is still exact."""
    data = np.load("examples/digits/digits_test.npz")
    calib = [{"input": data["x"][i:i + 16]} for i in range(0, 64, 16)]
    m = qir.compile("examples/digits/digits.onnx", target="kryo", quantize="a16w8", calibration=calib)
    feeds = _quantized_feed(m.graph, data["x"][:20])
    arrays = [feeds[v.name] for v in m.graph.inputs]
    out = m.executable.run(arrays)
    ref = Interpreter(m.graph).run({v.name: a for v, a in zip(m.graph.inputs, arrays)})
    for o, r in zip(out, ref):
        np.testing.assert_array_equal(o, r)
    report = m.executable.report()
    assert "only u8 activations" in report
    spec = next(iter(m.executable._specs.values()))
    assert spec.lowered.kernels  # max pools, flatten: generated
