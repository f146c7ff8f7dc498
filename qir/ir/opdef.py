"""The op registry: each op is defined once, with its attribute schema, type inference and
numpy reference kernel (its executable semantics).

Defining an op::

    @op("nn.relu", inputs=["x"], outputs=["y"], infer=same_as(0))
    def relu(x):
        return np.maximum(x, 0)

Attributes are declared with :class:`Attr` and reach the kernel as keyword arguments, with
defaults filled in. Input/output names end with ``?`` when optional and ``*`` when variadic
(only the last one). A kernel returns one array or a tuple, one per output; control-flow
kernels declare ``needs_runner=True`` and receive ``run_graph(graph, feeds) -> list``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import numpy as np

from qir.errors import QirError, ShapeInferenceError, VerificationError
from qir.ir.types import DType, TensorType, Type

REQUIRED = object()
"""Default of an attribute that must be given."""

#: Attribute kinds and the Python values they hold.
ATTR_KINDS = {
    "int": int, "float": float, "str": str, "ints": tuple, "floats": tuple, "strs": tuple,
    "tensor": np.ndarray, "tensors": tuple, "dtype": DType, "type": object, "graph": object,
    "graphs": tuple,
}


@attrs.frozen
class Attr:
    """One attribute's schema: its kind (a key of ATTR_KINDS) and default (or REQUIRED/None)."""

    kind: str = attrs.field(validator=attrs.validators.in_(ATTR_KINDS))
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _port_spec(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(names)


@attrs.define
class OpDef:
    """The single definition of an op."""

    name: str
    inputs: tuple[str, ...] = attrs.field(converter=_port_spec)
    outputs: tuple[str, ...] = attrs.field(converter=_port_spec)
    attrs: dict[str, Attr]
    kernel: Callable[..., Any]
    infer: Callable[["InferContext"], list[Type]]
    doc: str = ""
    needs_runner: bool = False
    verify: Callable[["InferContext"], None] | None = None
    #: ``decompose(node, graph) -> list[Value]``: builds the node's equivalent in standard ops
    #: before it in ``graph`` (one Value per output); compound ops (qir/ir/ops/fused.py) have one
    #: so that exporters and targets lacking them still work. See fused.expand_node.
    decompose: Callable[..., list] | None = None

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def variadic_inputs(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].endswith("*")

    @property
    def variadic_outputs(self) -> bool:
        return bool(self.outputs) and self.outputs[-1].endswith("*")

    def min_inputs(self) -> int:
        return sum(1 for n in self.inputs if not n.endswith(("?", "*")))

    def max_inputs(self) -> int | None:
        return None if self.variadic_inputs else len(self.inputs)

    def resolve_attrs(self, given: dict[str, Any], where: str = "") -> dict[str, Any]:
        """``given`` with defaults filled in; unknown or missing required attributes raise."""
        unknown = set(given) - set(self.attrs)
        if unknown:
            raise VerificationError(f"{where}op {self.name} has no attribute(s) {sorted(unknown)}; "
                                    f"known: {sorted(self.attrs)}")
        out = {}
        for key, spec in self.attrs.items():
            if key in given:
                out[key] = given[key]
            elif spec.required:
                raise VerificationError(f"{where}op {self.name} needs attribute {key!r}")
            else:
                out[key] = spec.default
        return out


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Add an op definition; a second definition of the same name is an error naming both."""
    if opdef.name in _REGISTRY:
        old = _REGISTRY[opdef.name]
        raise QirError(f"op {opdef.name} defined twice: in {old.kernel.__module__} and "
                       f"{opdef.kernel.__module__}")
    _REGISTRY[opdef.name] = opdef
    return opdef


def op(name: str, *, inputs: Sequence[str], outputs: Sequence[str] = ("y",),
       attrs: dict[str, Attr] | None = None, infer: Callable, needs_runner: bool = False,
       verify: Callable | None = None, doc: str | None = None,
       decompose: Callable | None = None) -> Callable:
    """Decorator: register the decorated function as the reference kernel of op ``name``."""

    def wrap(kernel: Callable) -> Callable:
        register(OpDef(name, inputs, outputs, dict(attrs or {}), kernel, infer,
                       doc or (kernel.__doc__ or "").strip(), needs_runner, verify, decompose))
        return kernel

    return wrap


def get_op(name: str) -> OpDef:
    """The definition of op ``name``; unknown names raise a QirError listing close ones."""
    _load_builtin_ops()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        raise QirError(f"unknown op {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")) from None


def has_op(name: str) -> bool:
    _load_builtin_ops()
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    _load_builtin_ops()
    return dict(_REGISTRY)


def _load_builtin_ops() -> None:
    import qir.ir.ops  # noqa: F401  (registers the built-in op families)


# -- type inference ------------------------------------------------------------------------

class InferContext:
    """What an op's inference function sees: input types, constant inputs and attributes."""

    def __init__(self, node, opdef: OpDef, num_outputs: int | None = None):
        self.node = node
        self.opdef = opdef
        self.attrs = opdef.resolve_attrs(node.attrs, f"node {node.name}: ")
        inputs = node.inputs
        self.input_types: list[Type | None] = [None if v is None else v.type for v in inputs]
        self._inputs = inputs
        self.num_outputs = num_outputs

    def __len__(self) -> int:
        return len(self.input_types)

    def has(self, i: int) -> bool:
        """Whether optional input ``i`` is present."""
        return i < len(self._inputs) and self._inputs[i] is not None

    def type(self, i: int) -> TensorType:
        t = self.input_types[i]
        if t is None:
            raise ShapeInferenceError(f"node {self.node.name} ({self.node.op}): input {i} is missing or untyped")
        return t

    def dtype(self, i: int) -> DType:
        return self.type(i).dtype

    def shape(self, i: int):
        """Shape of input i (tuple of dims) or None when unknown."""
        t = self.input_types[i]
        return getattr(t, "shape", None)

    def const(self, i: int) -> np.ndarray | None:
        """The value of input i when it is a constant, else None."""
        if not self.has(i):
            return None
        return self._inputs[i].const

    def fail(self, message: str) -> ShapeInferenceError:
        return ShapeInferenceError(f"node {self.node.name} ({self.node.op}): {message}")


def infer_types(node, num_outputs: int | None = None) -> list[Type]:
    """Output types of ``node`` from its op's inference function."""
    opdef = get_op(node.op)
    ctx = InferContext(node, opdef, num_outputs)
    if opdef.verify is not None:
        opdef.verify(ctx)
    try:
        types = opdef.infer(ctx)
    except QirError:
        raise
    except Exception as exc:  # an inference bug or malformed node: name the node
        raise ShapeInferenceError(f"node {node.name} ({node.op}): type inference failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
    if num_outputs is not None and len(types) > num_outputs:
        types = types[:num_outputs]
    return list(types)


def call_kernel(opdef: OpDef, node, inputs: list, run_graph=None) -> tuple:
    """Run ``opdef``'s kernel on numpy ``inputs`` with the node's resolved attributes."""
    kwargs = opdef.resolve_attrs(node.attrs)
    if opdef.needs_runner:
        kwargs["run_graph"] = run_graph
    # Broadcast views (splat constants: one value, zero strides) reach kernels materialized:
    # numpy takes other summation paths (no BLAS) for zero-stride operands, which would change
    # the last bits against the same graph with the constant computed at run time.
    inputs = [np.ascontiguousarray(a) if isinstance(a, np.ndarray) and not a.flags.c_contiguous
              and 0 in a.strides else a for a in inputs]
    result = opdef.kernel(*inputs, **kwargs)
    return result if isinstance(result, tuple) else (result,)


def conform(value, result: Any) -> Any:
    """A kernel's result in the dtype its Value declares (numpy promotes where ONNX does not)."""
    t = value.type
    if isinstance(t, TensorType) and result is not None and not isinstance(result, list):
        result = np.asarray(result)
        if result.dtype != t.dtype.numpy:
            result = result.astype(t.dtype.numpy)
        # C order, so that a kernel's rounding never depends on how an earlier kernel laid out its
        # result (numpy sums a contiguous axis pairwise, a strided one sequentially; BLAS paths
        # differ too): the interpreter, planned runs (arena slots are contiguous) and rewritten
        # graphs (a transpose is a view) then agree bit for bit.
        if result.ndim and not result.flags.c_contiguous:
            result = np.ascontiguousarray(result)
    return result
