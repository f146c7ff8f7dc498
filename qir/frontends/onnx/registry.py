"""How ONNX ops map onto qir ops: a registry of converters, keyed by (domain, op type, version).

qir ops have the semantics of the newest ONNX version of the op, with every attribute explicit.
A converter turns one ONNX node of any opset into qir nodes, upgrading older forms (attributes
that later became inputs, changed defaults). ``simple`` covers the common case of a one-to-one
mapping; ``converter`` decorates a function for the rest::

    simple("Relu", "nn.relu")

    @converter("Squeeze", qir_op="tensor.squeeze")
    def squeeze(ctx):
        axes = ctx.inputs[1] if ctx.opset >= 13 else ctx.const_ints(ctx.attrs.pop("axes", None))
        return ctx.emit("tensor.squeeze", [ctx.inputs[0], axes])

The exporter uses the reverse map (qir op → ONNX op type) recorded by both.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from qir.errors import QirError

ONNX_DOMAIN = ""
ML_DOMAIN = "ai.onnx.ml"


def canonical_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


@attrs.frozen
class Converter:
    op_type: str
    domain: str
    since_version: int
    fn: Callable[..., Any]


_CONVERTERS: dict[tuple[str, str], list[Converter]] = {}
#: qir op → (ONNX domain, ONNX op type), for the exporter.
EXPORT_NAMES: dict[str, tuple[str, str]] = {}


def converter(op_type: str, *, qir_op: str | None = None, domain: str = ONNX_DOMAIN,
              since_version: int = 1) -> Callable:
    """Register ``fn(ctx) -> list[Value | None]`` for ONNX ``op_type`` from ``since_version`` on."""
    domain = canonical_domain(domain)

    def wrap(fn: Callable) -> Callable:
        entries = _CONVERTERS.setdefault((domain, op_type), [])
        if any(c.since_version == since_version for c in entries):
            raise QirError(f"two ONNX converters for {domain or 'ai.onnx'}::{op_type} "
                           f"since version {since_version}")
        entries.append(Converter(op_type, domain, since_version, fn))
        entries.sort(key=lambda c: c.since_version)
        if qir_op is not None:
            EXPORT_NAMES.setdefault(qir_op, (domain, op_type))
        return fn

    return wrap


def simple(op_type: str, qir_op: str, *, domain: str = ONNX_DOMAIN, since_version: int = 1,
           drop: tuple[str, ...] = ()) -> None:
    """A one-to-one mapping: same inputs, same outputs, same attributes (less ``drop``)."""

    def convert(ctx):
        attrs_ = {k: v for k, v in ctx.attrs.items() if k not in drop}
        return ctx.emit(qir_op, ctx.inputs, attrs_)

    converter(op_type, qir_op=qir_op, domain=domain, since_version=since_version)(convert)


def lookup(domain: str, op_type: str, version: int) -> Converter | None:
    """The converter for ``op_type`` at opset ``version`` (the newest one not newer than it)."""
    _load_builtin_converters()
    found = None
    for conv in _CONVERTERS.get((canonical_domain(domain), op_type), ()):
        if conv.since_version <= version:
            found = conv
    return found


def supported_ops() -> list[tuple[str, str]]:
    _load_builtin_converters()
    return sorted(_CONVERTERS)


def _load_builtin_converters() -> None:
    import qir.frontends.onnx.ops  # noqa: F401
