"""The host CPU as code generation sees it: LLVM CPU name, feature string and vector ISA.

``host_isa()`` detects AVX-512 (16 fp32 lanes, 32 registers) or AVX2+FMA (8 lanes, 16 registers)
with llvmlite's host feature query. ``QIR_KRYO_ISA=avx2`` (or ``sse``) generates for a narrower
ISA on a wider host: the features string then has every AVX-512/AMX/AVX10/AVX-VNNI feature off, so
LLVM never emits an instruction the narrower host lacks (tests use it to cover AVX2 on AVX-512).
"""

from __future__ import annotations

import os
from functools import lru_cache

import attrs
import llvmlite.binding as llvm

from qir.errors import OptionError
from qir.lowering.kernels import VectorISA

ISAS = {
    "avx512": VectorISA("avx512", lanes=16, registers=32),
    "avx2": VectorISA("avx2", lanes=8, registers=16),
    "sse": VectorISA("sse", lanes=4, registers=16, fma=False),
}
_WIDE_PREFIXES = ("avx512", "amx", "avx10", "avxvnni", "evex512")


@attrs.frozen
class Host:
    """What code is generated for: CPU name, LLVM feature string and the vector ISA."""

    cpu: str
    features: str
    isa: VectorISA
    triple: str


@lru_cache(maxsize=None)
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def native_isa_name() -> str:
    """The widest ISA the host has: avx512, avx2 or sse."""
    _init()
    f = llvm.get_host_cpu_features()
    if f.get("avx512f") and f.get("avx512vl"):
        return "avx512"
    if f.get("avx2") and f.get("fma"):
        return "avx2"
    return "sse"


def available_isas() -> list[str]:
    """Every ISA code can be generated for on this host (narrower ones included)."""
    order = ["sse", "avx2", "avx512"]
    return order[:order.index(native_isa_name()) + 1]


def host(isa: str | None = None) -> Host:
    """The code generation host for ``isa`` (default: ``$QIR_KRYO_ISA`` or the native one)."""
    _init()
    return _host(isa or os.environ.get("QIR_KRYO_ISA") or native_isa_name())


@lru_cache(maxsize=None)
def _host(name: str) -> Host:
    if name not in ISAS:
        raise OptionError(f"unknown kryo ISA {name!r}; known: {', '.join(ISAS)}")
    if name not in available_isas():
        raise OptionError(f"this host cannot run {name} code (it has {native_isa_name()}); "
                          f"unset QIR_KRYO_ISA or choose one of {', '.join(available_isas())}")
    feats = llvm.get_host_cpu_features()
    if name != "avx512":
        for key in list(feats):
            if key.startswith(_WIDE_PREFIXES):
                feats[key] = False
    if name == "sse":
        for key in list(feats):
            if key.startswith(("avx", "fma", "f16c")):
                feats[key] = False
    return Host(llvm.get_host_cpu_name(), feats.flatten(), ISAS[name], llvm.get_process_triple())


def target_machine(h: Host, codemodel: str = "jitdefault"):
    """A fresh TargetMachine (MCJIT takes ownership of it, so never share one).

    ``codemodel="small"`` for objects linked by a system linker (qir.targets.kryo.library)."""
    _init()
    target = llvm.Target.from_triple(h.triple)
    return target.create_target_machine(cpu=h.cpu, features=h.features, opt=3, reloc="pic",
                                        codemodel=codemodel)


# -- cross targets (qir.targets.kryo.library builds standalone libraries for them) --

#: 128-bit NEON: 4 fp32 lanes, 32 vector registers, fused multiply-add.
NEON = VectorISA("neon", lanes=4, registers=32)


@lru_cache(maxsize=None)
def aarch64_host() -> Host:
    """AArch64 Linux with NEON, tuned for Cortex-A76 (≈ Kryo 4xx/5xx Gold cores).

    fp32 NEON, and int8 with plain vector IR (NEON smull/smlal) by default, so builds run on
    Armv8.0 cores too (checked under ``qemu-aarch64 -cpu cortex-a53``); ``QIR_KRYO_INT8_DOT=
    dotprod`` (sdot, Cortex-A76) or ``i8mm`` (usdot) select the dot-product instructions.
    Cross-compiled, never run here."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return Host("cortex-a76", "+neon", NEON, "aarch64-unknown-linux-gnu")
