"""qir kryo vs onnxruntime on ResNet-18-, MobileNetV2-style and transformer-block fp32 models.

    .venv/bin/python bench/kryo_vs_ort.py [--models resnet18,mobilenetv2] [--threads 1] [--runs 20]

The models are built in code with torch (random weights, never downloaded), exported to ONNX in a
temporary directory, compiled with ``qir.compile(..., target="kryo")`` and run interleaved with an
onnxruntime session (ORT_ENABLE_ALL, same thread count) in one process. Prints p50 latency,
GFLOP/s (2 FLOP per multiply-add of the convs and GEMMs) and the ratio ORT time / qir time, and
checks that both agree. onnxruntime's threads do not spin-wait between runs unless --ort-spin
(interleaved, spinning threads would take the cores qir's threads need). Numbers on a shared
machine are noisy: rerun before trusting a change.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def resnet18():
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def mobilenetv2():
    import torch.nn as nn

    def cbr(cin, cout, k, s, groups=1):
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

    class Inverted(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            hid = cin * t
            layers = (cbr(cin, hid, 1, 1) if t != 1 else []) + cbr(hid, hid, 3, s, hid)
            layers += [nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.res = s == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    layers = cbr(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(Inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += cbr(cin, 1280, 1, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def transformer(d: int = 256, h: int = 4, f: int = 1024):
    """An encoder block (pre-LayerNorm, ``h`` heads, GELU MLP of width ``f``), width ``d``; the
    benchmark runs d 256 on sequences of 128."""
    import torch

    width, heads, hidden = d, h, f

    class Block(torch.nn.Module):
        def __init__(self, d=width, h=heads, f=hidden):
            super().__init__()
            self.h, self.ln1, self.ln2 = h, torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            self.f1, self.f2, self.act = torch.nn.Linear(d, f), torch.nn.Linear(f, d), torch.nn.GELU()

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = [z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v)]
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1) @ v
            x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
            return x + self.f2(self.act(self.f1(self.ln2(x))))

    return Block()


MODELS = {"resnet18": resnet18, "mobilenetv2": mobilenetv2, "transformer": transformer}
INPUTS = {"resnet18": (1, 3, 224, 224), "mobilenetv2": (1, 3, 224, 224), "transformer": (1, 128, 256)}


def export(name: str, directory: str) -> str:
    import torch

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    for m in model.modules():  # non-trivial BN statistics, so that folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = os.path.join(directory, f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*INPUTS[name]),), path, input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False)
    return path


def model_flops(compiled) -> int:
    """2·MACs of the generated conv, GEMM and attention kernels (what GFLOP/s is counted on)."""
    total = 0
    for spec in compiled._executable._specs.values():
        for k in spec.lowered.kernels.values():
            if k.geometry is not None and k.kernel in ("conv", "gemm"):
                total += k.geometry.flops()
            elif k.kernel == "attention":
                s = k.schedule
                total += 2 * 2 * s.batch_heads * s.q_len * s.kv_len * s.depth
    return total


def bench(name: str, path: str, threads: int, runs: int, spin: bool = False) -> dict:
    import onnxruntime as ort

    import qir
    import qir.targets.kryo  # noqa: F401

    x = np.random.default_rng(0).standard_normal(INPUTS[name]).astype(np.float32)
    t0 = time.perf_counter()
    m = qir.compile(path, target="kryo", num_threads=threads)
    compile_s = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        # ORT's idle pool threads spin-wait after each run; interleaved with qir they take the
        # cores qir's threads need (qir's workers block instead). Off by default for fairness.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ours = m.run({"input": x})["output"]
    want = sess.run(None, {"input": x})[0]
    err = float(np.abs(ours - want).max() / max(np.abs(want).max(), 1e-30))
    tq, to = [], []
    for _ in range(3):  # warm-up
        m.run({"input": x})
        sess.run(None, {"input": x})
    for _ in range(runs):
        t = time.perf_counter()
        m.run({"input": x})
        tq.append(time.perf_counter() - t)
        t = time.perf_counter()
        sess.run(None, {"input": x})
        to.append(time.perf_counter() - t)
    flops = model_flops(m)
    pq, po = statistics.median(tq), statistics.median(to)
    spec = next(iter(m._executable._specs.values()))
    return dict(model=name, threads=threads, qir_ms=pq * 1e3, ort_ms=po * 1e3, ratio=po / pq,
                qir_gflops=flops / pq / 1e9, ort_gflops=flops / po / 1e9, gflop=flops / 1e9, rel_err=err,
                compile_s=compile_s, fallback=len(spec.lowered.fallback), isa=spec.lowered.isa.name)


def bench_int8(name: str, path: str, threads: int, runs: int, spin: bool = False) -> dict:
    """qir int8 (qir.compile(quantize="int8")) vs onnxruntime on the QDQ model from
    onnxruntime.quantization.quantize_static (u8 activations, per-channel s8 weights), both
    calibrated on the same 8 random inputs, run interleaved. Errors are relative to fp32 ORT."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import qir

    ort.set_default_logger_severity(3)  # quantize_static's models make ORT warn about unused initializers
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal(INPUTS[name]).astype(np.float32) for _ in range(8)]
    x = rng.standard_normal(INPUTS[name]).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": c} for c in calib)

        def get_next(self):
            return next(self.it, None)

    qdq = path.replace(".onnx", ".qdq.onnx")
    quantize_static(path, qdq, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    t0 = time.perf_counter()
    m = qir.compile(path, target="kryo", num_threads=threads, quantize="int8",
                    calibration=[{"input": c} for c in calib])
    compile_s = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(qdq, so, providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    scale = max(float(np.abs(ref).max()), 1e-30)
    err_q = float(np.abs(m.run({"input": x})["output"] - ref).max()) / scale
    err_o = float(np.abs(sess.run(None, {"input": x})[0] - ref).max()) / scale
    tq, to = [], []
    for _ in range(3):
        m.run({"input": x})
        sess.run(None, {"input": x})
    for _ in range(runs):
        t = time.perf_counter()
        m.run({"input": x})
        tq.append(time.perf_counter() - t)
        t = time.perf_counter()
        sess.run(None, {"input": x})
        to.append(time.perf_counter() - t)
    pq, po = statistics.median(tq), statistics.median(to)
    spec = next(iter(m._executable._specs.values()))
    return dict(model=name + "-int8", threads=threads, qir_ms=pq * 1e3, ort_ms=po * 1e3, ratio=po / pq,
                compile_s=compile_s, fallback=len(spec.lowered.fallback), isa=spec.lowered.isa.name,
                err_qir=err_q, err_ort=err_o)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenetv2,transformer")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ort-spin", action="store_true",
                    help="let onnxruntime's threads spin-wait between runs (its default; unfair when "
                         "interleaved: the spinning threads occupy the cores qir's threads need)")
    ap.add_argument("--int8", action="store_true",
                    help="also qir int8 vs onnxruntime's QDQ model (quantize_static) for the CNNs")
    args = ap.parse_args(argv)
    print(f"CPU: {_cpu_model()} ({os.cpu_count()} logical CPUs visible); batch 1 (CNNs 224x224, "
          f"transformer seq 128 d 256), fp32")
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            path = export(name, d)
            for th in (int(t) for t in args.threads.split(",")):
                r = bench(name, path, th, args.runs, args.ort_spin)
                print(f"{r['model']:12s} threads={r['threads']} isa={r['isa']} "
                      f"qir p50 {r['qir_ms']:8.2f} ms ({r['qir_gflops']:6.1f} GFLOP/s)  "
                      f"ort p50 {r['ort_ms']:8.2f} ms ({r['ort_gflops']:6.1f} GFLOP/s)  "
                      f"ORT/qir {r['ratio']:.2f}x  [{r['gflop']:.2f} GFLOP, compile {r['compile_s']:.1f} s, "
                      f"fallback nodes {r['fallback']}, max rel err {r['rel_err']:.1e}]", flush=True)
                if args.int8 and name != "transformer":
                    r = bench_int8(name, path, th, args.runs, args.ort_spin)
                    print(f"{r['model']:12s} threads={r['threads']} isa={r['isa']} "
                          f"qir p50 {r['qir_ms']:8.2f} ms  ort QDQ p50 {r['ort_ms']:8.2f} ms  "
                          f"ORT/qir {r['ratio']:.2f}x  [compile {r['compile_s']:.1f} s, fallback nodes "
                          f"{r['fallback']}, max err vs fp32: qir {r['err_qir']:.1e}, ORT {r['err_ort']:.1e}]",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
