"""Standalone model libraries: a graph's kryo code, its weights and a small C ABI in one ``.so``.

``build_model_library(graph, "model.so", arch="x86_64" | "aarch64")`` lowers the graph like
``KryoTarget`` (single-threaded), generates the kryo module for the chosen architecture (x86_64:
this host's CPU and vector ISA; aarch64: NEON, tuned for Cortex-A76), adds the ABI functions of
``model_abi.h`` (next to this file) in LLVM IR, embeds the packed weights as a constant and links
a shared library with ``ld.lld`` (``kind="object"`` writes the relocatable object instead, for
static linking). The ABI (version 1, see ``model_abi.h`` for the full contract)::

    uint32_t qir_model_abi_version(void);
    int32_t qir_model_num_inputs(void), qir_model_num_outputs(void);
    const qir_tensor_spec *qir_model_input_spec(int32_t i), *qir_model_output_spec(int32_t i);
    int64_t qir_model_arena_bytes(void);
    qir_model *qir_model_create(void);          /* allocates and zeroes the arena */
    int32_t qir_model_run(qir_model *, const void *const *inputs, void *const *outputs);
    void qir_model_destroy(qir_model *);

A ``qir_model`` is just the arena (memory plan, scratch, thread control block); the generated
``run`` reads inputs in place and the wrapper copies each output from its arena buffer into the
caller's buffer. Code runs single-threaded on the caller's thread; one model per thread.

Only complete graphs fit: every node needs a generated kernel (fallback nodes run Python
reference kernels, which a library cannot carry; they are refused with a TargetError that lists
them) and every input shape must be static (bind symbolic dims first, e.g. ``--input-dim``).
The output is deterministic: the same graph gives the same bytes (no build id, fixed names).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import attrs
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from qir.errors import OptionError, TargetError
from qir.ir.graph import Graph, Value
from qir.ir.types import DType, TensorType
from qir.lowering.kernels import LoweredGraph, lower_graph
from qir.targets.kryo import codegen as cg
from qir.targets.kryo.build import CONTROL_BYTES, ModuleBuilder
from qir.targets.kryo.host import Host, aarch64_host, host, target_machine
from qir.targets.kryo.pack import pack_weights

ABI_VERSION = 1
#: The C header documenting the ABI (installed next to this module).
HEADER = Path(__file__).with_name("model_abi.h")

#: Architecture name → code generation host.
ARCHES: dict[str, Callable[[], Host]] = {"x86_64": lambda: host(), "aarch64": lambda: _aarch64()}
#: Where each architecture's C libraries live (for DT_NEEDED entries); missing ones are skipped.
_LIBDIRS = {"x86_64": ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"],
            "aarch64": ["/usr/aarch64-linux-gnu/lib", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]}
_LLD = ["ld.lld-16", "ld.lld"]

#: DType → (enum qir_dtype code, itemsize); the codes are part of the ABI.
DTYPE_CODES = {DType.FLOAT32: (1, 4), DType.FLOAT16: (2, 2), DType.INT8: (3, 1), DType.UINT8: (4, 1),
               DType.INT32: (5, 4), DType.INT64: (6, 8), DType.BOOL: (7, 1), DType.FLOAT64: (8, 8),
               DType.INT16: (9, 2), DType.UINT16: (10, 2)}

I32 = ir.IntType(32)
I8 = ir.IntType(8)
#: struct qir_tensor_spec {const char *name; int32_t dtype, rank; const int64_t *dims; int64_t nbytes;}
SPEC = ir.LiteralStructType([cg.I8P, I32, I32, cg.I8P, cg.I64])


def _aarch64() -> Host:
    """The AArch64 host; ``QIR_KRYO_INT8_DOT=dotprod`` adds the Armv8.2 dot product extension
    (int8 convs/matmuls use ``sdot``; Cortex-A76 has it), ``=i8mm`` the Armv8.6 i8mm one (``usdot``;
    the code then needs such a CPU, e.g. ``qemu-aarch64 -cpu max``). Default: plain NEON (Armv8.0)."""
    h = aarch64_host()
    extra = {"dotprod": ",+dotprod", "i8mm": ",+i8mm"}.get(os.environ.get("QIR_KRYO_INT8_DOT", ""))
    return attrs.evolve(h, features=h.features + extra) if extra else h


def build_model_library(graph: Graph, out_path, *, arch: str = "x86_64", kind: str = "shared") -> Path:
    """Write ``graph`` as a model library with the ``model_abi.h`` C ABI to ``out_path``.

    ``arch``: ``"x86_64"`` (this host's CPU features, so run it on this machine type) or
    ``"aarch64"`` (Linux, NEON). ``kind``: ``"shared"`` (an ELF shared library, linked with
    ``ld.lld``) or ``"object"`` (a relocatable object to link statically, ``-lm`` needed).
    The graph is used as given: optimize it first (``qir.passes.run(graph, opt_level=3)``) for fused
    kernels. Raises TargetError for symbolic input dims or nodes without a generated kernel.
    """
    if arch not in ARCHES:
        raise OptionError(f"unknown model library architecture {arch!r}; known: {', '.join(ARCHES)}")
    if kind not in ("shared", "object"):
        raise OptionError(f"model library kind must be 'shared' or 'object', got {kind!r}")
    _check_static(graph)
    h = ARCHES[arch]()
    lowered = lower_graph(graph, h.isa)
    _check_complete(graph, lowered)
    obj = emit_object(lowered, h)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "object":
        out.write_bytes(obj)
    else:
        _link_shared(obj, out, arch)
    return out


def _check_static(graph: Graph) -> None:
    for v in list(graph.inputs) + list(graph.outputs):
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise TargetError(f"model library: {v.name!r} is not a tensor of known rank ({t}); "
                              f"a library needs tensors with static shapes")
        symbolic = [d for d in t.shape if not isinstance(d, int)]
        if symbolic:
            example = ",".join(str(d) if isinstance(d, int) else "1" for d in t.shape)
            raise TargetError(f"model library: {v.name!r} has symbolic dims {symbolic} (shape {list(t.shape)}); "
                              f"a library is built for fixed shapes: fix every input's dims, e.g. "
                              f"--input-dim {v.name} {example} (Python: qir.ir.shapes.bind_input_dims)")
        if t.dtype not in DTYPE_CODES:
            raise TargetError(f"model library: {v.name!r} has dtype {t.dtype.value}, which the C ABI does "
                              f"not carry (supported: {', '.join(d.value for d in DTYPE_CODES)})")


def _check_complete(graph: Graph, lowered: LoweredGraph) -> None:
    if not lowered.fallback:
        return
    ops = {n.name: n.op for n in graph.nodes}
    lines = "\n".join(f"  {name} ({ops.get(name, '?')}): {why}" for name, why in lowered.fallback.items())
    raise TargetError(f"model library: {len(lowered.fallback)} node(s) have no generated kryo kernel and "
                      f"would need Python at run time, which a standalone library cannot carry:\n{lines}\n"
                      f"replace or remove those ops, or run the model with qir.compile(target='kryo')")


def arena_bytes(lowered: LoweredGraph) -> int:
    """Bytes of one model's arena: memory plan, scratch (64-aligned), thread control block."""
    return lowered.plan.arena_size + -(-lowered.scratch_size // 64) * 64 + CONTROL_BYTES


def emit_object(lowered: LoweredGraph, h: Host) -> bytes:
    """The object file of ``lowered`` for ``h``: kryo code (1 thread), weights and the ABI."""
    module, _segs = ModuleBuilder(lowered, h, num_threads=1).build()
    _check_intrinsics(module, h)
    _AbiBuilder(module, lowered, h).build()
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    tm = target_machine(h, codemodel="small")
    mod.data_layout = str(tm.target_data)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=1))
    pb.getModulePassManager().run(mod, pb)
    return tm.emit_object(mod)


#: Intrinsic prefixes another architecture's backend cannot select (LLVM would abort the process).
_FOREIGN_INTRINSICS = {"x86_64": ("llvm.aarch64.", "llvm.arm."), "aarch64": ("llvm.x86.",)}


def _check_intrinsics(module: ir.Module, h: Host) -> None:
    arch = h.triple.split("-")[0]
    foreign = sorted(f.name for f in module.functions
                     if f.is_declaration and f.name.startswith(_FOREIGN_INTRINSICS.get(arch, ())))
    if foreign:
        raise TargetError(f"model library: the kernels of this graph use {', '.join(foreign)}, which {arch} "
                          f"does not have; build it for the architecture those kernels were written for")


class _AbiBuilder:
    """Adds the model_abi.h functions to a kryo module and hides everything else."""

    def __init__(self, module: ir.Module, lowered: LoweredGraph, h: Host):
        self.m = module
        self.host = h
        self.lw = lowered
        self.graph = lowered.graph
        self._n = 0

    def build(self) -> None:
        for fn in self.m.functions:  # node<i>/seg<k>/run/cores: internal, so two models never clash
            if not fn.is_declaration:
                fn.linkage = "internal"
        weights = self._weights()
        ins = [self._spec(v) for v in self.graph.inputs]
        outs = [self._spec(v) for v in self.graph.outputs]
        self._const_fn("qir_model_abi_version", I32, ABI_VERSION)
        self._const_fn("qir_model_num_inputs", I32, len(ins))
        self._const_fn("qir_model_num_outputs", I32, len(outs))
        self._const_fn("qir_model_arena_bytes", cg.I64, arena_bytes(self.lw))
        self._spec_fn("qir_model_input_spec", self._table("qir_inputs", ins), len(ins))
        self._spec_fn("qir_model_output_spec", self._table("qir_outputs", outs), len(outs))
        self._create()
        self._destroy()
        self._run(weights)

    # -- constant data --
    def _global(self, name: str, init: ir.Constant, align: int = 8) -> ir.GlobalVariable:
        g = ir.GlobalVariable(self.m, init.type, name)
        g.initializer, g.global_constant, g.linkage, g.align = init, True, "internal", align
        return g

    def _bytes(self, data: bytes, align: int = 8) -> ir.Value:
        self._n += 1
        t = ir.ArrayType(I8, len(data))
        return self._global(f"qir_data{self._n}", ir.Constant(t, bytearray(data)), align).bitcast(cg.I8P)

    def _weights(self) -> ir.Value:
        if self.lw.weights_size == 0:
            return ir.Constant(cg.I8P, None)
        blob = pack_weights(self.lw, self.host).astype("<f4").tobytes()  # little-endian on both arches
        t = ir.ArrayType(I8, len(blob))
        return self._global("qir_weights", ir.Constant(t, bytearray(blob)), 64).bitcast(cg.I8P)

    def _spec(self, v: Value) -> ir.Constant:
        code, size = DTYPE_CODES[v.type.dtype]
        dims = [int(d) for d in v.type.shape]
        dims_p = self._bytes(np.asarray(dims, "<i8").tobytes()) if dims else ir.Constant(cg.I8P, None)
        return ir.Constant(SPEC, [self._bytes(v.name.encode() + b"\0", 1), ir.Constant(I32, code),
                                  ir.Constant(I32, len(dims)), dims_p, cg.c64(size * math.prod(dims))])

    def _table(self, name: str, specs: list[ir.Constant]) -> ir.GlobalVariable:
        return self._global(name, ir.Constant(ir.ArrayType(SPEC, len(specs)), specs))

    # -- functions --
    def _fn(self, name: str, ret, args) -> tuple[ir.Function, ir.IRBuilder]:
        fn = ir.Function(self.m, ir.FunctionType(ret, args), name=name)
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    def _declare(self, name: str, ret, args) -> ir.Function:
        return self.m.globals.get(name) or ir.Function(self.m, ir.FunctionType(ret, args), name=name)

    def _const_fn(self, name: str, t, value: int) -> None:
        _fn, b = self._fn(name, t, [])
        b.ret(ir.Constant(t, value))

    def _spec_fn(self, name: str, table: ir.GlobalVariable, n: int) -> None:
        fn, b = self._fn(name, cg.I8P, [I32])
        (i,) = fn.args
        ok = b.and_(b.icmp_signed(">=", i, I32(0)), b.icmp_signed("<", i, I32(n)))
        with b.if_then(ok):
            p = b.gep(table, [I32(0), i], inbounds=True)
            b.ret(b.bitcast(p, cg.I8P))
        b.ret(ir.Constant(cg.I8P, None))

    def _create(self) -> None:
        memalign = self._declare("posix_memalign", I32, [cg.I8P.as_pointer(), cg.I64, cg.I64])
        memset = self._declare("llvm.memset.p0.i64", ir.VoidType(), [cg.I8P, I8, cg.I64, ir.IntType(1)])
        size = arena_bytes(self.lw)
        _fn, b = self._fn("qir_model_create", cg.I8P, [])
        slot = b.alloca(cg.I8P)
        rc = b.call(memalign, [slot, cg.c64(64), cg.c64(size)])
        with b.if_then(b.icmp_signed("!=", rc, I32(0))):
            b.ret(ir.Constant(cg.I8P, None))
        p = b.load(slot)
        b.call(memset, [p, I8(0), cg.c64(size), ir.IntType(1)(0)])  # the arena starts zeroed, as in Compiled
        b.ret(p)

    def _destroy(self) -> None:
        free = self._declare("free", ir.VoidType(), [cg.I8P])
        fn, b = self._fn("qir_model_destroy", ir.VoidType(), [cg.I8P])
        b.call(free, [fn.args[0]])
        b.ret_void()

    def _run(self, weights: ir.Value) -> None:
        memcpy = self._declare("llvm.memcpy.p0.p0.i64", ir.VoidType(),
                               [cg.I8P, cg.I8P, cg.I64, ir.IntType(1)])
        run = self.m.globals["run"]
        pp = cg.I8P.as_pointer()
        fn, b = self._fn("qir_model_run", I32, [cg.I8P, pp, pp])
        arena, inputs, outputs = fn.args
        null = ir.Constant(cg.I8P, None)
        bad = b.or_(b.icmp_unsigned("==", arena, null),
                    b.or_(b.icmp_unsigned("==", inputs, ir.Constant(pp, None)),
                          b.icmp_unsigned("==", outputs, ir.Constant(pp, None))))
        with b.if_then(bad):
            b.ret(I32(-1))
        for arr, vals in ((inputs, self.graph.inputs), (outputs, self.graph.outputs)):
            for i in range(len(vals)):
                p = b.load(b.gep(arr, [cg.c64(i)], inbounds=True))
                with b.if_then(b.icmp_unsigned("==", p, null)):
                    b.ret(I32(-1))
        b.call(run, [arena, weights, inputs, cg.c64(0)])
        for j, v in enumerate(self.graph.outputs):
            dst = b.load(b.gep(outputs, [cg.c64(j)], inbounds=True))
            nbytes = DTYPE_CODES[v.type.dtype][1] * math.prod(int(d) for d in v.type.shape)
            b.call(memcpy, [dst, self._source(b, v, arena, inputs), cg.c64(nbytes), ir.IntType(1)(0)])
        b.ret(I32(0))

    def _source(self, b: ir.IRBuilder, v: Value, arena, inputs) -> ir.Value:
        """Where output ``v`` is after ``run``: its arena buffer, an input, or a constant."""
        buf = self.lw.plan.buffers.get(v.name)
        if buf is not None:
            return b.gep(arena, [cg.c64(buf.offset)], inbounds=True)
        if v in self.graph.inputs:
            return b.load(b.gep(inputs, [cg.c64(self.graph.inputs.index(v))], inbounds=True))
        if v.const is not None:
            data = np.ascontiguousarray(v.const, dtype=v.type.dtype.numpy)
            return self._bytes(data.astype(data.dtype.newbyteorder("<")).tobytes(), 64)
        raise AssertionError(f"output %{v.name} has no storage")


def _find_lld() -> str:
    for name in _LLD:
        path = shutil.which(name)
        if path:
            return path
    raise TargetError("model library: ld.lld not found; install it (Debian: apt-get install lld-16)")


def _link_shared(obj: bytes, out: Path, arch: str) -> None:
    """``ld.lld -shared``: no build id (deterministic bytes); DT_NEEDED libc/libm when found."""
    needed = []
    for lib in ("libm.so.6", "libc.so.6"):
        found = next((Path(d) / lib for d in _LIBDIRS[arch] if (Path(d) / lib).is_file()), None)
        if found is not None:
            needed.append(str(found))
    with tempfile.TemporaryDirectory(prefix="qir-lib-") as tmp:
        o = Path(tmp) / "model.o"
        o.write_bytes(obj)
        cmd = [_find_lld(), "-shared", "--build-id=none", "--hash-style=gnu", "-soname", out.name,
               "-o", str(out), str(o), "--as-needed", *needed]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TargetError(f"model library: linking {out} failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
