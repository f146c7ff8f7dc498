"""KryoTarget: fp32 graphs compiled to host machine code with llvmlite, run without Python
between generated nodes.

Compile: bind shapes (when the inputs are static), lower (qir.lowering.kernels: kernels,
schedules, layouts, memory plan), generate one module, emit an object file (through the compile
cache). The context binary holds the graph and that object; ``load`` packs the weights and maps the
object into an MCJIT engine. Graphs with symbolic input dims are specialized on the first run with
each new input shape (again through the cache).

Execution: the generated segments are called through ctypes (which releases the GIL) with the
arena, the packed weights and the input addresses; nodes without a kernel run their reference
kernels in Python between segments, reading and writing the same arena. With ``num_threads`` N
the code is generated for N threads: every kernel splits its outer loop (conv: group × panel × row
items; pooling and depthwise: rows; elementwise: chunks) whose items the threads claim with
atomics in the generated code; a node starts when all items of the previous one are done. A
persistent pool of N − 1 Python threads enters each segment together with the caller (one
wake-up per segment, not per op); a descheduled thread delays no one but the final join.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import struct
import threading
import weakref
from typing import Any

import numpy as np

from qir.errors import ExecutionError, OptionError, QirError, TargetError
from qir.ir import serialize
from qir.ir.graph import Graph, Node
from qir.ir.interpreter import Interpreter
from qir.ir.opdef import call_kernel, conform, get_op
from qir.ir.shapes import bind_input_dims
from qir.ir.types import TensorType
from qir.lowering.kernels import LoweredGraph, choose_kernel, lower_graph
from qir.lowering.memory import captured_values
from qir.targets.base import CompileOptions, Executable, Support, Target, register_target
from qir.targets.kryo import cache
from qir.targets.kryo.build import CODEGEN_VERSION, CONTROL_BYTES, MAX_THREADS, STATS, LoadedObject, compile_object
from qir.targets.kryo.host import Host, host
from qir.targets.kryo.pack import pack_weights

MAGIC = b"QIRKRYO\0"
FORMAT_VERSION = 1
_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class ThreadPool:
    """``size - 1`` persistent worker threads; ``call(fn, *args)`` runs ``fn(*args, tid)`` on the
    caller (tid 0) and on every worker that wakes up in time, and returns when all those are done.

    The generated code splits work dynamically (qir.targets.kryo.codegen.Emitter.parallel), so the
    caller alone can do all of it: a worker the OS has not scheduled by the time the caller
    finishes is not waited for (on a busy machine that wait costs a scheduler time slice); it
    skips that call when it wakes. ctypes drops the GIL during each call, so the generated code
    runs truly in parallel.
    """

    def __init__(self, size: int):
        self.size = size
        self._go = [threading.Semaphore(0) for _ in range(size - 1)]
        self._done = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._job: tuple | None = None
        self._gen = 0  # the current call; a worker runs each call at most once
        self._open = False  # workers may still join the current call
        self._active = 0  # workers that joined it
        self._closed = False
        self._error: BaseException | None = None
        for i in range(1, size):
            threading.Thread(target=self._work, args=(i,), daemon=True, name=f"qir-kryo-{i}").start()

    def _work(self, tid: int) -> None:
        last = 0
        while True:
            self._go[tid - 1].acquire()
            with self._lock:
                if self._closed:
                    return
                if not self._open or self._gen == last:
                    continue  # woke too late for that call
                last = self._gen
                self._active += 1
                fn, args = self._job
            try:
                fn(*args, tid)
            except BaseException as exc:  # pragma: no cover - generated code does not raise
                self._error = exc
            self._done.release()

    def close(self) -> None:
        """Let the workers exit (called when the compiled model is garbage-collected)."""
        with self._lock:
            self._closed = True
        for go in self._go:
            go.release()

    def call(self, fn, *args) -> None:
        if self.size == 1:
            fn(*args, 0)
            return
        with self._lock:
            self._gen += 1
            self._job = (fn, args)
            self._open, self._active = True, 0
        for go in self._go:
            go.release()
        fn(*args, 0)
        with self._lock:
            self._open = False
            joined = self._active
        for _ in range(joined):
            self._done.acquire()
        if self._error is not None:
            raise self._error


def _static_shapes(graph: Graph) -> tuple[tuple[int, ...], ...] | None:
    shapes = []
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None or not all(isinstance(d, int) for d in t.shape):
            return None
        shapes.append(tuple(t.shape))
    return tuple(shapes)


def specialize(graph: Graph, shapes: tuple[tuple[int, ...], ...]) -> Graph:
    """A copy of ``graph`` with its inputs bound to ``shapes`` (types re-inferred)."""
    if _static_shapes(graph) == shapes:
        return graph
    g = graph.copy()
    bind_input_dims(g, {v.name: s for v, s in zip(g.inputs, shapes) if s is not None})
    return g


def build(graph: Graph, h: Host, options: CompileOptions) -> tuple[LoweredGraph, bytes, list[str]]:
    """Lower ``graph`` (static shapes) and get its object code from the cache or by codegen."""
    lowered = lower_graph(graph, h.isa)
    from qir.targets.kryo.codegen_int8 import int8_dot

    key = cache.cache_key(serialize.dumps(graph), "kryo", CODEGEN_VERSION, h.cpu, h.features, h.isa.name,
                          h.triple, options.num_threads, int8_dot(h))
    hit = cache.get(key)
    if hit is not None:
        STATS["cache_hits"] += 1
        return lowered, hit[0], hit[1]
    obj, segs = compile_object(lowered, h, options.num_threads)
    cache.put(key, obj, segs)
    return lowered, obj, segs


class Compiled:
    """One shape specialization, loaded: arena, packed weights, segment entry points."""

    def __init__(self, lowered: LoweredGraph, obj: bytes, segs: list[str], h: Host, num_threads: int = 1):
        self.lowered = lowered
        self.pool = ThreadPool(num_threads)
        weakref.finalize(self, self.pool.close)
        self.graph = lowered.graph
        self.weights = pack_weights(lowered)
        order = {n.name: i for i, n in enumerate(lowered.graph.nodes)}
        self.node_fns = {name: f"node{order[name]}" for name in lowered.kernels}
        self.loaded = LoadedObject(obj, h, segs + ["run"] + list(self.node_fns.values()))
        size = lowered.plan.arena_size + -(-lowered.scratch_size // 64) * 64 + CONTROL_BYTES
        self._arena_raw = np.zeros(size + 128, np.uint8)
        start = -self._arena_raw.ctypes.data % 64
        self.arena = self._arena_raw[start:start + size]
        self.arena_addr = self.arena.ctypes.data
        ctrl = lowered.plan.arena_size + -(-lowered.scratch_size // 64) * 64
        self._control = self.arena[ctrl:ctrl + CONTROL_BYTES]
        self.weights_addr = self.weights.ctypes.data if self.weights.size else 0
        self.n_inputs = len(self.graph.inputs)
        self._ptrs = (ctypes.c_void_p * max(self.n_inputs, 1))()
        self.ptrs_addr = ctypes.addressof(self._ptrs)
        self.steps: list[tuple[str, Any]] = []
        fns = iter(segs)
        for kind, nodes in lowered.segments():
            if kind == "kernel":
                self.steps.append(("kernel", _FN(self.loaded.addresses[next(fns)])))
            else:
                self.steps.append(("fallback", nodes[0]))
        if all(kind == "kernel" for kind, _ in self.steps):
            self.steps = [("kernel", _FN(self.loaded.addresses["run"]))] if self.steps else []
        self._views = {name: self._view(name) for name in lowered.plan.buffers}
        self._lock = threading.Lock()

    def _view(self, name: str) -> np.ndarray:
        b = self.lowered.plan.buffers[name]
        n = int(np.prod(b.shape, dtype=np.int64))
        return np.frombuffer(self.arena, dtype=b.dtype.numpy, count=n, offset=b.offset).reshape(b.shape)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for i, a in enumerate(arrays):
                self._ptrs[i] = a.ctypes.data if isinstance(a, np.ndarray) else None
            env: dict[str, Any] = {}
            for kind, step in self.steps:
                if kind == "kernel":
                    self._control[:] = 0  # work counters start over in every call
                    self.pool.call(step, self.arena_addr, self.weights_addr, self.ptrs_addr)
                else:
                    self._fallback(step, arrays, env)
            # copies of arena views; sequences and optionals (fallback outputs) are returned as they are
            return [_copy(self._value(v, arrays, env)) for v in self.graph.outputs]

    def profile(self, arrays: list[np.ndarray], runs: int = 5) -> list[tuple[str, str, float]]:
        """(node, op, median seconds) per node: generated nodes called one by one through their
        exported functions, fallback nodes timed in Python. Outputs equal those of ``run``."""
        import time

        times: dict[str, list[float]] = {}
        with self._lock:
            for i, a in enumerate(arrays):
                self._ptrs[i] = a.ctypes.data if isinstance(a, np.ndarray) else None
            for _ in range(runs):
                env: dict[str, Any] = {}
                for node in self.graph.nodes:
                    t = time.perf_counter()
                    if node.name in self.node_fns:
                        self._control[:] = 0
                        fn = _FN(self.loaded.addresses[self.node_fns[node.name]])
                        self.pool.call(fn, self.arena_addr, self.weights_addr, self.ptrs_addr)
                    else:
                        self._fallback(node, arrays, env)
                    times.setdefault(node.name, []).append(time.perf_counter() - t)
        return [(n.name, n.op, float(np.median(times[n.name]))) for n in self.graph.nodes]

    def _value(self, v, arrays, env):
        if v.name in self._views:
            return self._views[v.name]
        if v.const is not None:
            return v.const
        if v.name in env:
            return env[v.name]
        return arrays[self.graph.inputs.index(v)]

    def _fallback(self, node: Node, arrays, env) -> None:
        ins = [None if v is None else self._value(v, arrays, env) for v in node.inputs]
        opdef = get_op(node.op)
        runner = None
        if opdef.needs_runner:  # If/Loop/Scan bodies run in the interpreter, seeing captured values
            outer = {id(v): self._value(v, arrays, env) for v in captured_values(node, self.graph)}
            interp = self._interpreter = getattr(self, "_interpreter", None) or Interpreter(self.graph)
            runner = lambda sub, args: interp.run_graph(sub, args, outer)  # noqa: E731
        try:
            outs = call_kernel(opdef, node, ins, runner)
        except QirError:
            raise
        except Exception as exc:
            raise ExecutionError(f"node {node.name} ({node.op}) failed in its reference kernel: "
                                 f"{type(exc).__name__}: {exc}") from exc
        for v, r in zip(node.outputs, outs):
            if v is None:
                continue
            r = conform(v, r)
            if v.name in self._views:
                np.copyto(self._views[v.name], np.asarray(r).reshape(self._views[v.name].shape))
            else:
                env[v.name] = r


def _copy(x: Any) -> Any:
    return np.array(x, copy=True) if isinstance(x, (np.ndarray, np.generic)) else x


class KryoExecutable(Executable):
    """Runs a kryo context binary; specializes once per new input shape set."""

    def __init__(self, graph: Graph, options: CompileOptions, h: Host,
                 prebuilt: dict[tuple, Compiled] | None = None):
        self.graph = graph
        self.options = options
        self.host = h
        self._specs: dict[tuple, Compiled] = dict(prebuilt or {})
        self._lock = threading.Lock()

    def compiled(self, shapes: tuple[tuple[int, ...], ...]) -> Compiled:
        spec = self._specs.get(shapes)
        if spec is None:
            with self._lock:
                spec = self._specs.get(shapes)
                if spec is None:
                    g = specialize(self.graph, shapes)
                    spec = self._specs[shapes] = Compiled(*build(g, self.host, self.options), self.host,
                                                          self.options.num_threads)
        return spec

    def run(self, inputs: list[Any]) -> list[Any]:
        # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
        arrays = [np.require(a, dtype=v.type.dtype.numpy, requirements="C") if isinstance(v.type, TensorType)
                  else a for a, v in zip(inputs, self.graph.inputs)]
        # sequence / optional inputs (read only by fallback nodes) do not specialize the code
        return self.compiled(tuple(a.shape if isinstance(a, np.ndarray) else None for a in arrays)).run(arrays)

    def report(self) -> str:
        """The lowering report of every specialization built so far."""
        return "\n".join(s.lowered.report() for s in self._specs.values()) or "(not specialized yet)"


@register_target
class KryoTarget(Target):
    """fp32 CPU code from llvmlite for the host's vector ISA (AVX-512 or AVX2+FMA)."""

    name = "kryo"

    def __init__(self):
        self.last_report = ""

    def supports(self, node: Node) -> Support:
        k = choose_kernel(node, host().isa)
        if isinstance(k, str):
            if "not known before run time" in k:
                return Support(True, "kernel chosen once shapes are bound")
            return Support(False, k + " (runs its reference kernel)")
        return Support(True)

    def cost(self, node: Node) -> float:
        return 1.0 if self.supports(node) else 100.0

    def compile(self, graph: Graph, options: CompileOptions) -> bytes:
        if options.num_threads > MAX_THREADS:
            raise OptionError(f"kryo supports at most {MAX_THREADS} threads, got num_threads={options.num_threads}")
        h = host()
        shapes = _static_shapes(graph)
        header: dict[str, Any] = {"isa": h.isa.name, "cpu": h.cpu, "features": h.features,
                                  "codegen": CODEGEN_VERSION, "num_threads": options.num_threads}
        obj = b""
        if shapes is not None:
            lowered, obj, segs = build(graph, h, options)
            header.update(shapes=[list(s) for s in shapes], segments=segs,
                          fallback=lowered.fallback)
            self.last_report = lowered.report()
        gbytes = serialize.dumps(graph)
        head = json.dumps(header, sort_keys=True).encode()
        payload = struct.pack("<III", FORMAT_VERSION, len(head), len(gbytes)) + head + gbytes + obj
        return MAGIC + hashlib.sha256(payload).digest() + payload

    def load(self, blob: bytes, options: CompileOptions) -> Executable:
        if blob[:8] != MAGIC:
            raise TargetError("not a kryo context binary (bad magic); recompile the model for target kryo")
        digest, payload = blob[8:40], memoryview(blob)[40:]
        if hashlib.sha256(payload).digest() != digest:
            raise TargetError("kryo context binary is corrupt (checksum mismatch); recompile the model")
        version, hlen, glen = struct.unpack_from("<III", payload)
        if version != FORMAT_VERSION:
            raise TargetError(f"kryo context binary format {version}, this qir reads {FORMAT_VERSION}; "
                              f"recompile the model")
        pos = 12
        header = json.loads(bytes(payload[pos:pos + hlen]))
        graph = serialize.loads(payload[pos + hlen:pos + hlen + glen])
        obj = bytes(payload[pos + hlen + glen:])
        h = host(header["isa"])
        if (h.cpu, h.features) != (header["cpu"], header["features"]) or header["codegen"] != CODEGEN_VERSION:
            raise TargetError(f"kryo context binary was built for {header['cpu']} ({header['isa']}) by "
                              f"{header['codegen']}; recompile it on this host")
        prebuilt = {}
        if obj and header["num_threads"] == options.num_threads:  # else rebuilt for these threads
            shapes = tuple(tuple(s) for s in header["shapes"])
            lowered = lower_graph(graph, h.isa)
            prebuilt[shapes] = Compiled(lowered, obj, header["segments"], h, options.num_threads)
        return KryoExecutable(graph, options, h, prebuilt)
