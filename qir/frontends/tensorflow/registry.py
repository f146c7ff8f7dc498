"""How TensorFlow ops map onto qir ops: a registry of converters keyed by TF op type.

A converter turns one TF operation (of a frozen graph) into qir nodes and returns one Value per TF
output (None for outputs it does not produce)::

    simple("Relu", "nn.relu")                       # one-to-one, no attributes

    @converter("Squeeze")
    def squeeze(ctx):
        dims = ctx.attr("squeeze_dims")
        ...
        return ctx.emit("tensor.squeeze", [ctx.inputs[0], ctx.ints(dims)])

Op types that pass their first input through (Identity, StopGradient, ...) are listed in
``PASSTHROUGH``; control-flow op types the frontend cannot express are in ``CONTROL_FLOW`` so that
the error explains why they are refused.
"""

from __future__ import annotations

from typing import Callable

from qir.errors import QirError

Converter = Callable[..., object]

_CONVERTERS: dict[str, Converter] = {}

#: Ops whose output is their first input (no qir node).
PASSTHROUGH: frozenset[str] = frozenset({
    "Identity", "StopGradient", "Snapshot", "PreventGradient", "EnsureShape", "CheckNumerics",
    "PlaceholderWithDefault", "FakeParam"})

#: Data-dependent control flow: v2 ops (tf.cond / tf.while_loop in tf.function) and the v1 ops
#: they are lowered to. qir has control.if/control.loop, but this frontend does not convert TF
#: function bodies yet.
CONTROL_FLOW: frozenset[str] = frozenset({
    "While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase", "Switch", "Merge",
    "Enter", "Exit", "NextIteration", "LoopCond", "RefSwitch", "RefEnter", "RefMerge"})

#: Function calls: their bodies are inlined (importer.py).
CALLS: frozenset[str] = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


def converter(*op_types: str) -> Callable[[Converter], Converter]:
    """Register ``fn(ctx)`` as the converter of each TF op type in ``op_types``."""

    def wrap(fn: Converter) -> Converter:
        for op_type in op_types:
            if op_type in _CONVERTERS:
                raise QirError(f"two TensorFlow converters for op type {op_type}: "
                               f"{_CONVERTERS[op_type].__module__} and {fn.__module__}")
            _CONVERTERS[op_type] = fn
        return fn

    return wrap


def simple(op_type: str, qir_op: str, **attrs) -> None:
    """A one-to-one mapping: the TF op's inputs feed ``qir_op`` with fixed ``attrs``."""
    converter(op_type)(lambda ctx: ctx.emit(qir_op, ctx.inputs, dict(attrs)))


def lookup(op_type: str) -> Converter | None:
    _load_builtin_converters()
    return _CONVERTERS.get(op_type)


def supported_ops() -> list[str]:
    """Every TF op type the frontend converts (pass-through and Const/Placeholder included)."""
    _load_builtin_converters()
    return sorted(set(_CONVERTERS) | PASSTHROUGH | {"Const", "Placeholder"})


def _load_builtin_converters() -> None:
    from qir.frontends.tensorflow import ops_math, ops_nn, ops_tensor  # noqa: F401
