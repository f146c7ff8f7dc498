"""The portable int8 kernels (no x86 intrinsics) BIT-EXACT against the reference interpreter:
built for AArch64 NEON and run under ``qemu-aarch64 -cpu cortex-a76`` (a standalone program
linked statically with the model object), and the same code generation forced on this host with
``QIR_KRYO_INT8_DOT=portable`` so every CI machine checks it. The optional i8mm path
(``QIR_KRYO_INT8_DOT=i8mm``: ``usdot``) runs under ``qemu-aarch64 -cpu max``.

The qemu tests need qemu-user, clang-16, lld-16 and the arm64 cross C library (see
test_library.py); they skip, naming what is missing, without them.
"""

import shutil
import subprocess
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import given, settings

import qir
from qir.ir.graph import Graph
from qir.ir.interpreter import Interpreter
from qir.ir.shapes import bind_input_dims
from qir.ir.types import DType
from qir.lowering.kernels import lower_graph
from qir.targets.kryo.build import ModuleBuilder
from qir.targets.kryo.codegen_int8 import int8_dot
from qir.targets.kryo.host import aarch64_host, host, target_machine
from qir.targets.kryo.library import HEADER, build_model_library
from tests.targets.kryo.test_int8 import (SETTINGS, _out_attrs, _weights_and_params, conv_cases, matmul_cases,
                                          requant_params, run_both, t)

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "examples" / "digits"
RUN_MODEL = Path(__file__).with_name("c") / "run_model.c"
A64_SYSROOT = Path("/usr/aarch64-linux-gnu")


def _a64_tools():
    missing = [t for t in ("qemu-aarch64", "clang-16", "ld.lld-16") if shutil.which(t) is None]
    if not (A64_SYSROOT / "lib" / "libc.so.6").is_file():
        missing.append(f"{A64_SYSROOT}/lib/libc.so.6 (libc6-dev-arm64-cross, libgcc-12-dev-arm64-cross)")
    if missing:
        pytest.skip("AArch64 toolchain missing: " + ", ".join(missing) + " (`make install-toolchains`)")


# -- under qemu-aarch64 ----------------------------------------------------------------------

def _qemu_outputs(tmp_path: Path, g: Graph, feeds: dict, cpu: str = "cortex-a76") -> list[np.ndarray]:
    """``g`` built as an AArch64 object, linked statically with run_model.c, run under qemu on
    the raw bytes of ``feeds``; the output files read back with the graph's output dtypes."""
    _a64_tools()
    tmp_path.mkdir(parents=True, exist_ok=True)
    obj = build_model_library(g, tmp_path / "model.o", arch="aarch64", kind="object")
    exe = tmp_path / "run_static"
    _run(["clang-16", "--target=aarch64-linux-gnu", "-fuse-ld=lld", "-O2", "-Wall", "-I", HEADER.parent,
          RUN_MODEL, obj, "-static", "-lm", "-o", exe])
    ind, outd = tmp_path / "in", tmp_path / "out"
    ind.mkdir()
    outd.mkdir()
    for i, v in enumerate(g.inputs):
        np.ascontiguousarray(feeds[v.name], v.type.dtype.numpy).tofile(ind / f"input{i}.bin")
    stdout = _run(["qemu-aarch64", "-cpu", cpu, exe, ind, outd])
    assert "ok 4 runs" in stdout  # three runs on two models gave the same bytes
    return [np.fromfile(outd / f"output{j}.bin", v.type.dtype.numpy).reshape(v.type.shape)
            for j, v in enumerate(g.outputs)]


def _run(cmd) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _assert_same(outs, ref, g):
    assert len(outs) == len(ref) == len(g.outputs)
    for o, r, v in zip(outs, ref, g.outputs):
        assert o.dtype == r.dtype, v.name
        np.testing.assert_array_equal(o, r, err_msg=v.name)


@pytest.fixture(scope="module")
def quantized_digits():
    pytest.importorskip("onnx")
    x = np.load(DIGITS / "digits_test.npz")["x"].astype(np.float32)
    m = qir.compile(str(DIGITS / "digits.onnx"), quantize="int8", calibration=[{"input": x[:64]}])
    return m, x


def test_quantized_digits_aarch64_bit_exact_under_qemu(tmp_path, quantized_digits):
    m, x = quantized_digits
    g = m.graph.copy()
    batch = 16
    bind_input_dims(g, {"input": (batch, 1, 8, 8)})
    assert g.inputs[0].type.dtype == DType.UINT8 and g.outputs[0].type.dtype == DType.UINT8
    assert any(n.op == "qint.conv" for n in g.nodes) and any(n.op == "qint.matmul" for n in g.nodes)
    q = g.inputs[0].type.quant
    xq = np.clip(np.round(x[:batch] / q.scale[0]) + q.zero_point[0], 0, 255).astype(np.uint8)
    feeds = {"input": xq}
    outs = _qemu_outputs(tmp_path, g, feeds)
    _assert_same(outs, Interpreter(g).run(feeds), g)
    y = np.load(DIGITS / "digits_test.npz")["y"][:batch]
    assert (outs[0].argmax(1) == y).mean() >= 0.75  # still a digits classifier


def _conv_mix_graph(rng) -> Graph:
    """A padded conv (zero point 7 in the halo) → a padded, strided depthwise conv reading NHWC in
    place (border taps select the zero point), signed output; and a matmul with a ragged K."""
    g = Graph("mix")
    x = g.add_input("x", t(DType.UINT8, (2, 5, 9, 7)))
    a = g.add_input("a", t(DType.UINT8, (3, 37)))

    def params(m, max_shift=14):
        mult, shift = requant_params(rng, m, max_shift)
        return g.add_constant(mult, "m"), g.add_constant(shift, "s")

    w1 = g.add_constant(rng.integers(-128, 127, (13, 5, 3, 3), endpoint=True).astype(np.int8), "w1")
    b1 = g.add_constant(rng.integers(-3000, 3000, 13).astype(np.int32), "b1")
    h = g.add_node("qint.conv", [x, w1, *params(13), b1],
                   {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "x_zero_point": 7, "y_zero_point": 120}).output
    wd = g.add_constant(rng.integers(-128, 127, (13, 1, 3, 3), endpoint=True).astype(np.int8), "wd")
    y1 = g.add_node("qint.conv", [h, wd, *params(13, 40)],
                    {"kernel_shape": [3, 3], "pads": [1, 2, 0, 1], "strides": [2, 1], "group": 13,
                     "x_zero_point": 120, "y_zero_point": -5, "output_dtype": DType.INT8}).output
    wm = g.add_constant(rng.integers(-128, 127, (37, 21), endpoint=True).astype(np.int8), "wm")
    y2 = g.add_node("qint.matmul", [a, wm, *params(21)],
                    {"a_zero_point": 131, "y_zero_point": 77, "y_min": 20, "y_max": 230}).output
    g.outputs += [y1, y2]
    return g


def test_conv_depthwise_matmul_aarch64_bit_exact_under_qemu(tmp_path):
    rng = np.random.default_rng(5)
    g = _conv_mix_graph(rng)
    feeds = {"x": rng.integers(0, 255, (2, 5, 9, 7), endpoint=True).astype(np.uint8),
             "a": rng.integers(0, 255, (3, 37), endpoint=True).astype(np.uint8)}
    _assert_same(_qemu_outputs(tmp_path, g, feeds), Interpreter(g).run(feeds), g)


@pytest.mark.parametrize("path,intrinsic,cpu", [("dotprod", "sdot", "cortex-a76"), ("i8mm", "usdot", "max")])
def test_dot_product_extensions_bit_exact_under_qemu(tmp_path, monkeypatch, quantized_digits, path, intrinsic, cpu):
    """The opt-in paths (``QIR_KRYO_INT8_DOT``): ``sdot`` with x − 128 activations (Cortex-A76
    has dotprod) and ``usdot`` (i8mm: qemu's ``max`` CPU), both on the VNNI weight layout."""
    monkeypatch.setenv("QIR_KRYO_INT8_DOT", path)
    from qir.targets.kryo.library import ARCHES

    h = ARCHES["aarch64"]()
    assert int8_dot(h) == path
    rng = np.random.default_rng(11)
    g = _conv_mix_graph(rng)
    module, _ = ModuleBuilder(lower_graph(g, h.isa), h, num_threads=1).build()
    assert any(f.name.startswith(f"llvm.aarch64.neon.{intrinsic}.") for f in module.functions)
    feeds = {"x": rng.integers(0, 255, (2, 5, 9, 7), endpoint=True).astype(np.uint8),
             "a": rng.integers(0, 255, (3, 37), endpoint=True).astype(np.uint8)}
    _assert_same(_qemu_outputs(tmp_path / "mix", g, feeds, cpu=cpu), Interpreter(g).run(feeds), g)
    gd = quantized_digits[0].graph.copy()
    bind_input_dims(gd, {"input": (8, 1, 8, 8)})
    xd = {"input": rng.integers(0, 255, (8, 1, 8, 8), endpoint=True).astype(np.uint8)}
    _assert_same(_qemu_outputs(tmp_path / "digits", gd, xd, cpu=cpu), Interpreter(gd).run(xd), gd)


@pytest.mark.parametrize("path", ["portable", "dotprod"])
@settings(SETTINGS, max_examples=5)
@given(case=conv_cases())
def test_random_qconv_aarch64_bit_exact_under_qemu(tmp_path_factory, monkeypatch, path, case):
    """Random convs (groups, depthwise, strides, dilations, pads with the zero point, clamps) on
    Cortex-A76 under qemu, plain NEON and dotprod."""
    monkeypatch.setenv("QIR_KRYO_INT8_DOT", path)
    c, rng = case, np.random.default_rng(case["seed"])
    g = Graph("qconv_a64")
    x = g.add_input("x", t(DType.UINT8, (c["n"], c["cin"], c["h"], c["w"])))
    w, mv, sv, b = _weights_and_params(g, rng, c, c["cout"], (c["cout"], c["cin"] // c["group"], *c["k"]))
    attrs = dict(kernel_shape=list(c["k"]), strides=list(c["s"]), dilations=list(c["d"]), pads=c["pads"],
                 group=c["group"], x_zero_point=c["zx"], **_out_attrs(c))
    g.outputs.append(g.add_node("qint.conv", [x, w, mv, sv, b], attrs).output)
    feeds = {"x": rng.integers(0, 255, (c["n"], c["cin"], c["h"], c["w"]), endpoint=True).astype(np.uint8)}
    _assert_same(_qemu_outputs(tmp_path_factory.mktemp("qconv"), g, feeds), Interpreter(g).run(feeds), g)


def test_aarch64_int8_code_is_neon_without_x86_intrinsics(quantized_digits):
    g = quantized_digits[0].graph.copy()
    bind_input_dims(g, {"input": (1, 1, 8, 8)})
    h = aarch64_host()
    assert int8_dot(h) == "portable"
    module, _ = ModuleBuilder(lower_graph(g, h.isa), h, num_threads=1).build()
    assert not [f.name for f in module.functions if f.name.startswith("llvm.x86.")]
    mod = llvm.parse_assembly(str(module))
    tm = target_machine(h, codemodel="small")
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=1))
    pb.getModulePassManager().run(mod, pb)
    asm = tm.emit_assembly(mod)
    assert "smull\tv" in asm  # widening i16 multiplies on NEON registers


# -- the portable path on this host ----------------------------------------------------------

@pytest.fixture(params=["sse", None], ids=["4-lanes", "native"])
def portable(request, monkeypatch, tmp_path_factory):
    """Portable int8 code on this host: 4 lanes like NEON (the ``sse`` ISA) and the native width.
    A fresh compile cache, since the cache key does not carry the dot-product path."""
    monkeypatch.setenv("QIR_KRYO_INT8_DOT", "portable")
    monkeypatch.setenv("QIR_CACHE_DIR", str(tmp_path_factory.mktemp("qir-cache-portable")))
    if request.param:
        monkeypatch.setenv("QIR_KRYO_ISA", request.param)
    else:
        monkeypatch.delenv("QIR_KRYO_ISA", raising=False)
    h = host()
    assert int8_dot(h) == "portable"
    return h


def _no_x86_dot(g: Graph, h) -> None:
    module, _ = ModuleBuilder(lower_graph(g, h.isa), h, num_threads=1).build()
    used = [f.name for f in module.functions if "pmadd" in f.name or "vpdpbusd" in f.name]
    assert not used, used


@SETTINGS
@given(case=conv_cases())
def test_portable_qconv_bit_exact(portable, case):
    c, rng = case, np.random.default_rng(case["seed"])
    g = Graph("qconv_portable")
    x = g.add_input("x", t(DType.UINT8, (c["n"], c["cin"], c["h"], c["w"])))
    w, mv, sv, b = _weights_and_params(g, rng, c, c["cout"], (c["cout"], c["cin"] // c["group"], *c["k"]))
    attrs = dict(kernel_shape=list(c["k"]), strides=list(c["s"]), dilations=list(c["d"]), pads=c["pads"],
                 group=c["group"], x_zero_point=c["zx"], **_out_attrs(c))
    g.outputs.append(g.add_node("qint.conv", [x, w, mv, sv, b], attrs).output)
    _no_x86_dot(g, portable)
    run_both(g, {"x": rng.integers(0, 255, (c["n"], c["cin"], c["h"], c["w"]), endpoint=True).astype(np.uint8)})


@SETTINGS
@given(case=matmul_cases())
def test_portable_qmatmul_bit_exact(portable, case):
    c, rng = case, np.random.default_rng(case["seed"])
    g = Graph("qmatmul_portable")
    shape = (*c["rows"], c["k"])
    a = g.add_input("a", t(DType.UINT8, shape))
    w, mv, sv, b = _weights_and_params(g, rng, c, c["n"], (c["k"], c["n"]))
    g.outputs.append(g.add_node("qint.matmul", [a, w, mv, sv, b], {"a_zero_point": c["zx"], **_out_attrs(c)}).output)
    _no_x86_dot(g, portable)
    run_both(g, {"a": rng.integers(0, 255, shape, endpoint=True).astype(np.uint8)})


def test_portable_conv_mix_bit_exact(portable):
    rng = np.random.default_rng(5)
    g = _conv_mix_graph(rng)
    _no_x86_dot(g, portable)
    run_both(g, {"x": rng.integers(0, 255, (2, 5, 9, 7), endpoint=True).astype(np.uint8),
                 "a": rng.integers(0, 255, (3, 37), endpoint=True).astype(np.uint8)})


def test_unknown_dot_path_is_refused(monkeypatch):
    from qir.errors import OptionError

    monkeypatch.setenv("QIR_KRYO_INT8_DOT", "sdot16")
    with pytest.raises(OptionError, match="QIR_KRYO_INT8_DOT"):
        int8_dot(aarch64_host())
