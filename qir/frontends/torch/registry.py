"""How ATen ops map onto qir ops: one converter per ATen op (overload packet), in a registry.

A converter is ``fn(ctx) -> Value | list[Value] | None`` for one ``torch.fx`` node of an
ExportedProgram; ``ctx.args`` holds the node's arguments bound to the op schema's names (defaults
filled in), ``ctx.value(arg)`` gives the qir Value of a tensor argument, ``ctx.emit`` adds qir
nodes (provenance: the user's layer)::

    @aten("relu")
    def relu(ctx):
        return ctx.emit("nn.relu", [ctx.value(ctx.args["self"])])

Keys are ``"aten.<packet>"`` for ATen ops (every overload of ``aten.add`` shares one converter,
tensors and Python scalars alike), ``"operator.<name>"`` for the Python operators torch.export
uses on symbolic sizes and tuple outputs, and ``"higher_order.<name>"`` for higher-order ops.
No torch import here: the registry is plain data.
"""

from __future__ import annotations

from typing import Any, Callable

from qir.errors import QirError

Converter = Callable[[Any], Any]

_CONVERTERS: dict[str, Converter] = {}


def aten(*names: str, prefix: str = "aten") -> Callable[[Converter], Converter]:
    """Register ``fn`` as the converter of the ATen ops ``names`` (overload packets)."""

    def wrap(fn: Converter) -> Converter:
        for name in names:
            key = f"{prefix}.{name}"
            if key in _CONVERTERS:
                raise QirError(f"two torch converters for {key}: {_CONVERTERS[key].__qualname__} "
                               f"and {fn.__qualname__}")
            _CONVERTERS[key] = fn
        return fn

    return wrap


def python_op(*names: str) -> Callable[[Converter], Converter]:
    """Register a converter of Python ``operator`` functions (getitem, mul on sizes...)."""
    return aten(*names, prefix="operator")


def lookup(key: str) -> Converter | None:
    _load_builtin_converters()
    return _CONVERTERS.get(key)


def supported_ops() -> list[str]:
    """Every ATen/operator key with a converter, sorted."""
    _load_builtin_converters()
    return sorted(_CONVERTERS)


def _load_builtin_converters() -> None:
    import qir.frontends.torch.ops  # noqa: F401
