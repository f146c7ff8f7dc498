"""Whole models through qir.compile(target="kryo"): the digits CNN, a small CNN built with
onnx.helper (checked against onnxruntime), fallback of ops without kernels, and the compile cache."""

from pathlib import Path

import numpy as np
import pytest

import qir
import qir.targets.kryo  # noqa: F401  (registers the target)
from qir.errors import TargetError
from qir.ir.interpreter import Interpreter
from qir.targets.base import CompileOptions
from qir.targets.kryo import KryoTarget
from qir.targets.kryo.build import STATS

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "examples" / "digits"
RTOL, ATOL = 1e-4, 1e-5


def test_digits_matches_reference(isa):
    data = np.load(DIGITS / "digits_test.npz")
    x = data["x"][:64].astype(np.float32)
    m = qir.compile(str(DIGITS / "digits.onnx"), target="kryo")
    ref = qir.compile(str(DIGITS / "digits.onnx"), target="reference")
    out, want = m.run({"input": x})["logits"], ref.run({"input": x})["logits"]
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    assert (out.argmax(1) == want.argmax(1)).all()
    assert (out.argmax(1) == data["y"][:64]).mean() > 0.9  # the trained model still classifies


def _init(name, rng, shape, scale):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def small_cnn(with_unsupported: bool) -> "onnx.ModelProto":
    """conv-relu → depthwise(relu6) → 1×1 conv + residual → maxpool → [LogSoftmax] → conv → GAP → Gemm
    → Softmax (with_unsupported: LogSoftmax over channels, and a LogSoftmax over axis 0 instead of
    the Softmax; LogSoftmax has no kryo kernel)."""
    rng = np.random.default_rng(0)
    inits = [_init("w1", rng, (16, 3, 3, 3), 0.3), _init("b1", rng, (16,), 0.1),
             _init("wd", rng, (16, 1, 3, 3), 0.3), _init("bd", rng, (16,), 0.1),
             _init("w2", rng, (16, 16, 1, 1), 0.25), _init("b2", rng, (16,), 0.1),
             _init("w3", rng, (24, 16, 3, 3), 0.1), _init("b3", rng, (24,), 0.1),
             _init("wf", rng, (10, 24), 0.2), _init("bf", rng, (10,), 0.1),
             numpy_helper.from_array(np.float32(0.0), "zero"), numpy_helper.from_array(np.float32(6.0), "six")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
             n("Conv", ["r1", "wd", "bd"], ["cd"], pads=[1, 1, 1, 1], group=16),
             n("Clip", ["cd", "zero", "six"], ["rd"]),
             n("Conv", ["rd", "w2", "b2"], ["c2"]), n("Add", ["c2", "r1"], ["a2"]),
             n("MaxPool", ["a2"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    last = "p"
    if with_unsupported:
        nodes.append(n("LogSoftmax", ["p"], ["l"], axis=1))
        last = "l"
    nodes += [n("Conv", [last, "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
              n("Relu", ["c3"], ["r3"]), n("GlobalAveragePool", ["r3"], ["g"]),
              n("Flatten", ["g"], ["f"]), n("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
              n("LogSoftmax" if with_unsupported else "Softmax", ["logits"], ["prob"], axis=0 if with_unsupported else 1)]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 20, 18])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10]),
                               helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("with_unsupported,threads", [(False, 1), (True, 1), (True, 2)])
def test_small_cnn_matches_onnxruntime(isa, with_unsupported, threads):
    ort = pytest.importorskip("onnxruntime")
    model = small_cnn(with_unsupported)
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 18)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})
    m = qir.compile(model, target="kryo", num_threads=threads)
    out = m.run({"x": x})
    np.testing.assert_allclose(out["logits"], want[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["prob"], want[1], rtol=RTOL, atol=ATOL)
    spec = next(iter(m._executable._specs.values()))
    ops = {n.name: n.op for n in spec.graph.nodes}
    fallback_ops = sorted(ops[name] for name in spec.lowered.fallback)
    assert fallback_ops == (["nn.log_softmax", "nn.log_softmax"] if with_unsupported else [])
    kinds = [kind for kind, _ in spec.steps]
    assert kinds == (["kernel", "fallback", "kernel", "fallback"] if with_unsupported else ["kernel"])
    assert "nhwc" in spec.lowered.layouts.values()  # convs hand NHWC to each other


def test_recompile_hits_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QIR_CACHE_DIR", str(tmp_path))
    model = small_cnn(False)
    before = dict(STATS)
    m1 = qir.compile(model, target="kryo")
    assert STATS["codegen"] == before["codegen"] + 1
    m2 = qir.compile(model, target="kryo")
    assert STATS["codegen"] == before["codegen"] + 1  # no code generated the second time
    assert STATS["cache_hits"] == before["cache_hits"] + 1
    x = np.random.default_rng(2).standard_normal((2, 3, 20, 18)).astype(np.float32)
    np.testing.assert_array_equal(m1.run({"x": x})["prob"], m2.run({"x": x})["prob"])
    assert list((tmp_path / "kryo").glob("*.o"))


def test_corrupt_context_binary_is_a_clear_error():
    g = qir.load_onnx(small_cnn(False))
    tgt = KryoTarget()
    blob = bytearray(tgt.compile(g, CompileOptions()))
    blob[-1] ^= 0xFF
    with pytest.raises(TargetError, match="checksum"):
        tgt.load(bytes(blob), CompileOptions())
    with pytest.raises(TargetError, match="magic"):
        tgt.load(b"nonsense" * 8, CompileOptions())


def test_capability_table_names_the_reason():
    g = qir.load_onnx(small_cnn(True))
    tgt = KryoTarget()
    by_op = {n.op: tgt.supports(n) for n in g.nodes}
    assert by_op["nn.conv"].ok
    assert not by_op["nn.log_softmax"].ok and "nn.log_softmax" in by_op["nn.log_softmax"].reason


def test_fallback_outputs_match_interpreter_in_the_middle(isa):
    """A node without a kernel between kernels reads and writes the same arena."""
    g = qir.load_onnx(small_cnn(True))
    x = np.random.default_rng(3).standard_normal((2, 3, 20, 18)).astype(np.float32)
    want = Interpreter(g).run({"x": x})
    tgt = KryoTarget()
    exe = tgt.load(tgt.compile(g, CompileOptions()), CompileOptions())
    for o, w in zip(exe.run([x]), want):
        np.testing.assert_allclose(o, w, rtol=RTOL, atol=ATOL)


def test_cache_is_capped(tmp_path, monkeypatch):
    """After a write the cache trims least recently used objects down to QIR_CACHE_MAX_BYTES."""
    from qir.targets.kryo import cache

    monkeypatch.setenv("QIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("QIR_CACHE_MAX_BYTES", "2500")
    for i in range(4):
        cache.put(f"k{i}", bytes([i]) * 1000, ["seg0"])
    left = sorted(p.stem for p in (tmp_path / "kryo").glob("*.o"))
    assert left == ["k2", "k3"]
    assert cache.get("k3") == (bytes([3]) * 1000, ["seg0"])
    assert cache.get("k0") is None
    (tmp_path / "kryo" / "k3.o").write_bytes(b"torn")  # a damaged entry is a miss, never an error
    assert cache.get("k3") is None


def test_report_lists_fallbacks_and_threads_exit():
    import gc
    import threading

    model = small_cnn(True)
    before = threading.active_count()
    m = qir.compile(model, target="kryo", num_threads=3)
    assert threading.active_count() == before + 2  # a persistent pool: caller + 2 workers
    report = m._executable.report()
    assert "fallback" in report and "no kryo kernel for nn.log_softmax" in report
    del m
    gc.collect()
    for t in threading.enumerate():
        if t.name.startswith("qir-kryo-"):
            t.join(timeout=5)
    assert threading.active_count() == before


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "resnet50"])
def test_light_models_pre_softmax_match_onnxruntime(name):
    """The onnx wheel's light models, compared before their final softmax (after it, random inputs
    saturate to one-hot vectors that hide errors)."""
    ort = pytest.importorskip("onnxruntime")
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this onnx wheel")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    soft = [n for n in model.graph.node if n.op_type == "Softmax"][-1]
    info = {v.name: v for v in model.graph.value_info}
    model.graph.output.append(info[soft.input[0]])
    inits = {i.name for i in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in inits][0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {inp.name: x})
    out = list(qir.compile(model, target="kryo").run({inp.name: x}).values())
    pre, pre_want = out[-1], want[-1]
    scale = np.abs(pre_want).max()
    np.testing.assert_allclose(pre, pre_want, rtol=1e-4, atol=1e-5 * max(1.0, scale))


def test_control_flow_node_falls_back_with_its_subgraph(isa):
    """An If (no kernel) between convs runs its branch in the interpreter, seeing outer values."""
    rng = np.random.default_rng(4)
    n = helper.make_node
    then_g = helper.make_graph([n("Relu", ["c1"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 6, 6])])
    else_g = helper.make_graph([n("Neg", ["c1"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4, 6, 6])])
    graph = helper.make_graph(
        [n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), n("If", ["flag"], ["b"], then_branch=then_g,
                                                              else_branch=else_g),
         n("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1])], "cf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 6, 6])],
        [_init("w1", rng, (4, 3, 3, 3), 0.3), _init("w2", rng, (5, 4, 3, 3), 0.3)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ref = qir.compile(model, target="reference")
    m = qir.compile(model, target="kryo")
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        np.testing.assert_allclose(m.run(feeds)["y"], ref.run(feeds)["y"], rtol=RTOL, atol=ATOL)


def test_transformer_block_matches_onnxruntime(isa):
    """LayerNorm, QKV projection, split, heads, attention, GELU MLP and residuals (seq 32, d 64),
    exported from torch; every op gets a kernel."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")

    from tests.targets.kryo.test_light_models import bench_module

    block = bench_module().transformer(d=64, h=4, f=128)
    import io
    import warnings

    torch.manual_seed(0)
    x = torch.randn(1, 32, 64)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the tracer notes that split sizes become constants
        warnings.simplefilter("ignore")
        torch.onnx.export(block.eval(), (x,), buf, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    want = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    m = qir.compile(model, target="kryo")
    np.testing.assert_allclose(m.run({"x": x.numpy()})["y"], want, rtol=RTOL, atol=ATOL)
    spec = next(iter(m._executable._specs.values()))
    assert not spec.lowered.fallback, spec.lowered.fallback


def test_a_late_thread_skips_finished_work():
    """Thread 0 can do all the work of a 2-thread module alone; a worker entering afterwards
    finds every item claimed, skips, and changes nothing (this is what a descheduled worker does)."""
    from qir.targets.kryo.target import _FN

    g = qir.load_onnx(small_cnn(False))
    tgt = KryoTarget()
    opts = CompileOptions(num_threads=2)
    exe = tgt.load(tgt.compile(g, opts), opts)
    x = np.random.default_rng(5).standard_normal((2, 3, 20, 18)).astype(np.float32)
    want = exe.run([x])
    spec = next(iter(exe._specs.values()))
    run = _FN(spec.loaded.addresses["run"])
    spec._ptrs[0] = x.ctypes.data
    spec._control[:] = 0
    run(spec.arena_addr, spec.weights_addr, spec.ptrs_addr, 0)  # thread 0 alone: everything
    alone = [np.array(spec._views[v.name]) for v in spec.graph.outputs]
    run(spec.arena_addr, spec.weights_addr, spec.ptrs_addr, 1)  # the late worker: nothing left
    for a, b, w in zip(alone, [spec._views[v.name] for v in spec.graph.outputs], want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, w, rtol=RTOL, atol=ATOL)
