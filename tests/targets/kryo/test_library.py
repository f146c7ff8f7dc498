"""Standalone model libraries (qir.targets.kryo.library): model.so with the model_abi.h C ABI,
run by a C program (tests/targets/kryo/c/run_model.c) and through ctypes on this host, and built
for AArch64 and run under qemu-aarch64. Outputs are checked against the reference interpreter
on the unoptimized graph and against onnxruntime.

The AArch64 tests need qemu-user, clang-16, lld-16 and the arm64 cross C library (Debian:
``apt-get install qemu-user clang-16 lld-16 libc6-dev-arm64-cross libgcc-12-dev-arm64-cross``);
they skip, naming what is missing, without them."""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qir
from qir.errors import TargetError
from qir.ir.interpreter import Interpreter
from qir.ir.shapes import bind_input_dims
from qir.passes import run as run_passes
from qir.targets.kryo.library import HEADER, _check_intrinsics, aarch64_host, build_model_library

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tests.targets.kryo.test_models import small_cnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "examples" / "digits"
RUN_MODEL = Path(__file__).with_name("c") / "run_model.c"
A64_SYSROOT = Path("/usr/aarch64-linux-gnu")
TOL = 1e-5


def _which(*names):
    return next((p for p in map(shutil.which, names) if p), None)


def _lld():
    path = _which("ld.lld-16", "ld.lld")
    if path is None:
        pytest.skip("ld.lld not installed (apt-get install lld-16; `make install-toolchains`)")
    return path


def _host_cc():
    cc = _which("clang-16", "cc", "gcc")
    if cc is None:
        pytest.skip("no C compiler (clang-16 or cc) to build run_model.c")
    return cc


def _a64_tools():
    missing = [t for t in ("qemu-aarch64", "clang-16", "ld.lld-16") if shutil.which(t) is None]
    if not (A64_SYSROOT / "lib" / "libc.so.6").is_file():
        missing.append(f"{A64_SYSROOT}/lib/libc.so.6 (libc6-dev-arm64-cross, libgcc-12-dev-arm64-cross)")
    if missing:
        pytest.skip("AArch64 toolchain missing: " + ", ".join(missing) + " (`make install-toolchains`)")


def _digits(batch: int):
    g = qir.load_onnx(str(DIGITS / "digits.onnx"))
    bind_input_dims(g, {"input": (batch, 1, 8, 8)})
    x = np.load(DIGITS / "digits_test.npz")["x"][:batch].astype(np.float32)
    return g, {"input": x}


def _reference(g, feeds):
    return Interpreter(g).run(feeds)


def _optimized(g):
    return run_passes(g.copy(), opt_level=3)


def _write_inputs(d: Path, g, feeds) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(g.inputs):
        np.ascontiguousarray(feeds[v.name], "<f4").tofile(d / f"input{i}.bin")
    return d


def _read_outputs(d: Path, g):
    return [np.fromfile(d / f"output{j}.bin", "<f4").reshape(v.type.shape) for j, v in enumerate(g.outputs)]


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _check(outs, want, g):
    assert len(outs) == len(want) == len(g.outputs)
    for o, w, v in zip(outs, want, g.outputs):
        np.testing.assert_allclose(o, w, rtol=TOL, atol=TOL, err_msg=v.name)


def _c_program_on_host(tmp_path, g, feeds):
    _lld()
    cc = _host_cc()
    so = build_model_library(_optimized(g), tmp_path / "lib" / "model.so")
    exe = tmp_path / "run_model"
    _run([cc, "-O2", "-Wall", "-I", HEADER.parent, RUN_MODEL, so, f"-Wl,-rpath,{so.parent}", "-o", exe])
    ind, outd = _write_inputs(tmp_path / "in", g, feeds), tmp_path / "out"
    outd.mkdir()
    stdout = _run([exe, ind, outd])
    assert "ok 4 runs" in stdout
    return so, stdout, _read_outputs(outd, g)


def test_digits_so_from_c_matches_reference(tmp_path):
    g, feeds = _digits(8)
    _so, stdout, outs = _c_program_on_host(tmp_path, g, feeds)
    assert "input 0 input float32 [8,1,8,8] 2048 bytes" in stdout
    assert "output 0 logits float32 [8,10] 320 bytes" in stdout
    _check(outs, _reference(g, feeds), g)
    y = np.load(DIGITS / "digits_test.npz")["y"][:8]
    assert (outs[0].argmax(1) == y).mean() >= 0.75  # the trained model still classifies


def test_small_cnn_so_from_c_matches_reference_and_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = small_cnn(False)  # conv, depthwise+clip, residual add, maxpool, GAP, gemm, softmax
    g = qir.load_onnx(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 20, 18)).astype(np.float32)}
    _so, stdout, outs = _c_program_on_host(tmp_path, g, feeds)
    assert "output 1 prob float32 [2,10] 80 bytes" in stdout
    _check(outs, _reference(g, feeds), g)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for o, w in zip(outs, sess.run(None, feeds)):
        np.testing.assert_allclose(o, w, rtol=1e-4, atol=TOL)


class _Spec(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int32), ("rank", ctypes.c_int32),
                ("dims", ctypes.POINTER(ctypes.c_int64)), ("nbytes", ctypes.c_int64)]


def test_digits_so_through_ctypes(tmp_path):
    _lld()
    g, feeds = _digits(4)
    lib = ctypes.CDLL(str(build_model_library(_optimized(g), tmp_path / "model.so")))
    for name in ("qir_model_input_spec", "qir_model_output_spec"):
        getattr(lib, name).restype = ctypes.POINTER(_Spec)
    lib.qir_model_create.restype = ctypes.c_void_p
    lib.qir_model_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.qir_model_destroy.argtypes = [ctypes.c_void_p]
    assert lib.qir_model_abi_version() == 1
    assert (lib.qir_model_num_inputs(), lib.qir_model_num_outputs()) == (1, 1)
    s = lib.qir_model_output_spec(0).contents
    assert (s.name, s.dtype, s.rank, s.dims[0], s.dims[1], s.nbytes) == (b"logits", 1, 2, 4, 10, 160)
    assert not lib.qir_model_input_spec(1) and not lib.qir_model_output_spec(-1)
    x = feeds["input"]
    y = np.full((4, 10), np.nan, np.float32)
    ins, outs = (ctypes.c_void_p * 1)(x.ctypes.data), (ctypes.c_void_p * 1)(y.ctypes.data)
    m = lib.qir_model_create()
    assert m
    assert lib.qir_model_run(None, ins, outs) == -1  # QIR_MODEL_EINVAL, nothing written
    assert np.isnan(y).all()
    assert lib.qir_model_run(m, ins, outs) == 0
    lib.qir_model_destroy(m)
    _check([y], _reference(g, feeds), g)


def test_digits_aarch64_under_qemu_matches_reference(tmp_path):
    """model.so for AArch64 + run_model cross-compiled and dynamically linked against it, and a
    static executable from the object; both run under qemu-aarch64 (Cortex-A76)."""
    _a64_tools()
    g, feeds = _digits(8)
    opt = _optimized(g)
    so = build_model_library(opt, tmp_path / "lib" / "model.so", arch="aarch64")
    obj = build_model_library(opt, tmp_path / "lib" / "model.o", arch="aarch64", kind="object")
    cc = ["clang-16", "--target=aarch64-linux-gnu", "-fuse-ld=lld", "-O2", "-Wall", "-I", HEADER.parent, RUN_MODEL]
    _run(cc + [so, "-Wl,-rpath,$ORIGIN/lib", "-o", tmp_path / "run_dyn"])
    _run(cc + [obj, "-static", "-lm", "-o", tmp_path / "run_static"])
    assert so.read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine EM_AARCH64
    ind = _write_inputs(tmp_path / "in", g, feeds)
    want = _reference(g, feeds)
    results = {}
    for exe, extra in (("run_dyn", ["-L", A64_SYSROOT]), ("run_static", [])):
        outd = tmp_path / f"out_{exe}"
        outd.mkdir()
        stdout = _run(["qemu-aarch64", "-cpu", "cortex-a76", *extra, tmp_path / exe, ind, outd])
        assert "ok 4 runs" in stdout
        results[exe] = _read_outputs(outd, g)
        _check(results[exe], want, g)
    np.testing.assert_array_equal(results["run_dyn"][0], results["run_static"][0])


def test_aarch64_code_uses_neon():
    from qir.lowering.kernels import lower_graph
    from qir.targets.kryo.build import ModuleBuilder
    from qir.targets.kryo.host import target_machine

    import llvmlite.binding as llvm

    g, _ = _digits(1)
    h = aarch64_host()
    module, _ = ModuleBuilder(lower_graph(_optimized(g), h.isa), h).build()
    mod = llvm.parse_assembly(str(module))
    asm = target_machine(h, codemodel="small").emit_assembly(mod)
    assert "fmla\tv" in asm and ".4s" in asm  # 4-lane fp32 fused multiply-add on NEON registers


def test_foreign_intrinsics_are_refused_before_llvm_aborts():
    """LLVM aborts the process on an x86 intrinsic in AArch64 code; the library refuses first."""
    from llvmlite import ir

    m = ir.Module()
    v = ir.VectorType(ir.IntType(32), 16)
    ir.Function(m, ir.FunctionType(v, [v, v, v]), "llvm.x86.avx512.vpdpbusd.512")
    with pytest.raises(TargetError, match=r"llvm\.x86\.avx512\.vpdpbusd\.512.*aarch64"):
        _check_intrinsics(m, aarch64_host())


def _cumsum_model():
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["r"]), n("CumSum", ["r", "axis"], ["y"])]
    inits = [helper.make_tensor("axis", TensorProto.INT64, [], [1])]
    graph = helper.make_graph(nodes, "cumsum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_with_a_fallback_op_is_refused(tmp_path):
    g = qir.load_onnx(_cumsum_model())
    with pytest.raises(TargetError) as err:
        build_model_library(g, tmp_path / "model.so")
    msg = str(err.value)
    cumsum = next(node for node in g.nodes if node.op == "reduce.cum_sum")
    assert "no generated kryo kernel" in msg and cumsum.name in msg and cumsum.op in msg
    assert not (tmp_path / "model.so").exists()


def test_symbolic_dims_are_refused_with_a_hint(tmp_path):
    g = qir.load_onnx(str(DIGITS / "digits.onnx"))  # input N×1×8×8
    with pytest.raises(TargetError, match=r"'input' has symbolic dims \['N'\].*--input-dim"):
        build_model_library(g, tmp_path / "model.so")


def test_same_graph_gives_the_same_library_bytes(tmp_path):
    """Built twice here and once in a fresh interpreter with another hash seed."""
    _lld()
    g, _ = _digits(2)
    a = build_model_library(_optimized(g), tmp_path / "a" / "model.so").read_bytes()
    b = build_model_library(_optimized(g), tmp_path / "b" / "model.so").read_bytes()
    assert a == b
    script = (f"import qir; from tests.targets.kryo.test_library import _digits, _optimized; "
              f"from qir.targets.kryo.library import build_model_library; "
              f"build_model_library(_optimized(_digits(2)[0]), {str(tmp_path / 'c' / 'model.so')!r})")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    _run([sys.executable, "-c", script], cwd=ROOT, env=env)
    assert (tmp_path / "c" / "model.so").read_bytes() == a
