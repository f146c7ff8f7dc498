"""PyTorch → qir Graph through ``torch.export`` (ATen IR), never through ONNX.

``load_torch`` exports an ``nn.Module`` (in eval mode) with ``torch.export.export``, or takes an
ExportedProgram or a ``.pt2`` file written by ``torch.export.save``; decomposes it to core ATen
while keeping a few compound ops qir has whole (linear, scaled_dot_product_attention,
hardswish...); checks that every ATen op has a converter before converting anything, so all
unsupported ops are reported in one error; then converts node by node through the converter
registry (qir/frontends/torch/ops/). Parameters, buffers and lifted constants become graph
constants named by their state_dict names; user inputs keep their argument names; dims made
dynamic with ``torch.export.Dim`` become symbolic dims named after the Dim.

Every node output is typed by qir's own inference, then refined from torch's fake-tensor
metadata (``node.meta["val"]``: torch's own shapes, the ground truth), the way the ONNX importer
refines with ONNX shape inference. Symbolic sizes (``sym_size``, arithmetic on sizes) are
converted lazily into int64 shape computations only where a converter needs one (a reshape
whose target has two or more dynamic dims, a ``full`` of dynamic size...); most reshapes get a
constant target with 0 (copy this dim) and -1 (the rest) instead.
"""

from __future__ import annotations

import collections
import operator
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qir.errors import ModelLoadError, QirError, UnsupportedOpError
from qir.frontends.torch.registry import lookup
from qir.ir.graph import Graph, Value
from qir.ir.types import DType, TensorType

#: ATen ops kept whole when decomposing to core ATen: qir has them as single ops
#: (linear → gemm/matmul, SDPA → nn.attention) or as one activation op.
KEEP_WHOLE = ("linear", "scaled_dot_product_attention", "hardswish", "hardsigmoid", "silu", "mish",
              "softplus", "elu", "leaky_relu", "hardtanh", "gelu", "adaptive_avg_pool1d",
              "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool3d",
              "prelu", "_prelu_kernel", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
              "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d", "pixel_shuffle",
              "pixel_unshuffle", "rms_norm", "roll")

#: Ops that only check things at trace time and compute nothing.
NO_OPS = ("_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
          "sym_constrain_range_for_size", "_functional_assert_async")


def torch_module():
    """The torch module, or a QirError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise QirError("the PyTorch frontend needs torch, which is not installed",
                       hint="pip install qir[torch]") from None
    return torch


# -- getting an ExportedProgram ------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def export_program(model: Any, example_inputs: Any = None, dynamic_shapes: Any = None):
    """(ExportedProgram, description) for a module, an ExportedProgram or a .pt2 path."""
    torch = torch_module()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        try:
            return torch.export.load(str(path)), str(path)
        except Exception as exc:  # torch raises many kinds for a bad archive
            raise ModelLoadError(f"{path}: not a torch.export program ({_first_line(exc)})",
                                 hint="write it with torch.export.save(torch.export.export(model, args), "
                                      "'model.pt2')") from None
    if isinstance(model, torch.export.ExportedProgram):
        return model, "ExportedProgram"
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"load_torch takes an nn.Module, an ExportedProgram or a .pt2 path, "
                             f"not {type(model).__name__}")
    where = f"module {type(model).__name__}"
    if example_inputs is None:
        raise ModelLoadError(f"{where}: example_inputs are needed to export a module",
                             hint="call load_torch(module, (example_input, ...))")
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    training = model.training
    model.eval()  # qir compiles for inference: dropout off, batch norm on running statistics
    try:
        ep = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: torch.export could not capture the model: {_first_line(exc)}",
            hint="data-dependent control flow (e.g. `if x.sum() > 0:`) cannot be exported: express it "
                 "with torch.cond or torch.where, or fix the code until "
                 "torch.export.export(model, args) succeeds") from None
    finally:
        model.train(training)
    return ep, where


def decompose(ep):
    """``ep`` in core ATen, less the ops of KEEP_WHOLE."""
    torch = torch_module()
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        packet = getattr(torch.ops.aten, name, None)
        for overload in (packet.overloads() if packet is not None else ()):
            table.pop(getattr(packet, overload), None)
    return ep.run_decompositions(table)


# -- keys, dtypes, symbols -----------------------------------------------------------------

def op_key(target: Any) -> str:
    """The registry key of an fx call_function target."""
    torch = torch_module()
    if isinstance(target, torch._ops.OpOverload):
        ns, name = target._schema.name.split("::", 1)
        return f"{ns}.{name}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    if getattr(operator, getattr(target, "__name__", ""), None) is target:
        return f"operator.{target.__name__}"
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__name__', repr(target))}"


_DTYPES = {
    "float32": DType.FLOAT32, "float64": DType.FLOAT64, "float16": DType.FLOAT16,
    "bfloat16": DType.BFLOAT16, "int64": DType.INT64, "int32": DType.INT32, "int16": DType.INT16,
    "int8": DType.INT8, "uint8": DType.UINT8, "uint16": DType.UINT16, "uint32": DType.UINT32,
    "uint64": DType.UINT64, "bool": DType.BOOL, "complex64": DType.COMPLEX64,
    "complex128": DType.COMPLEX128, "float8_e4m3fn": DType.FLOAT8E4M3FN,
    "float8_e5m2": DType.FLOAT8E5M2,
}


def to_dtype(torch_dtype, where: str = "") -> DType:
    name = str(torch_dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise UnsupportedOpError(f"{where}torch dtype {name} has no qir equivalent")
    return _DTYPES[name]


def to_array(tensor) -> np.ndarray:
    """A numpy copy of a (CPU) torch tensor; bfloat16 through ml_dtypes."""
    torch = torch_module()
    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(DType.BFLOAT16.numpy)
    return t.numpy().copy()


def sym_expr(dim):
    """A torch size as an int or a sympy expression."""
    return dim if isinstance(dim, int) else dim.node.expr


def _is_symbolic(meta) -> bool:
    torch = torch_module()
    return isinstance(meta, (torch.SymInt, torch.SymFloat, torch.SymBool))


def _dim_names(ep) -> dict[str, str]:
    """torch symbol name (``s77``) → the name of the torch.export.Dim it came from."""
    names: dict[str, str] = {}
    for node in ep.graph.nodes:
        fake = getattr(node.meta.get("val"), "fake_mode", None)
        env = getattr(fake, "shape_env", None)
        if env is None:
            continue
        debug = getattr(env, "source_name_to_debug_name", {}) or {}
        for sym, sources in getattr(env, "var_to_sources", {}).items():
            for src in sources:
                src_name = src.name() if callable(src.name) else src.name
                if src_name in debug:
                    names.setdefault(str(sym), debug[src_name])
        break
    return names


_NAME_RE = re.compile(r"[^A-Za-z0-9_.]")


# -- converting ----------------------------------------------------------------------------

class ConvertContext:
    """What a converter sees of one fx node, and how it adds qir nodes."""

    def __init__(self, importer: "TorchImporter", node):
        self.importer = importer
        self.node = node
        self.graph: Graph = importer.graph
        self.name: str = node.name
        self.op = op_key(node.target)
        self.args: dict[str, Any] = bind_args(node)
        self.meta = node.meta.get("val")
        self.provenance = (importer.layer_of(node),)

    # values
    def value(self, arg, dtype: DType | None = None) -> Value:
        """The Value of a tensor argument (cast to ``dtype`` if given), or a 0-d constant of
        ``dtype`` (default: this node's output dtype) for a Python number."""
        if isinstance(arg, Value):
            value = arg
        elif hasattr(arg, "op") and hasattr(arg, "meta"):  # an fx node
            value = self.importer.value_of(arg)
        else:
            dt = dtype or self.out_dtype
            return self.const(np.asarray(arg, dtype=dt.numpy))
        if dtype is not None and value.type.dtype != dtype:
            value = self.emit("elementwise.cast", [value], {"to": dtype})
        return value

    @property
    def out_dtype(self) -> DType:
        meta = self.meta[0] if isinstance(self.meta, (tuple, list)) else self.meta
        return to_dtype(meta.dtype, f"node {self.name}: ")

    @property
    def out_shape(self) -> list:
        """Torch's output shape of this node: ints and sympy expressions."""
        meta = self.meta[0] if isinstance(self.meta, (tuple, list)) else self.meta
        return [sym_expr(d) for d in meta.shape]

    @staticmethod
    def meta_shape(arg) -> list:
        return [sym_expr(d) for d in arg.meta["val"].shape]

    def rank(self, arg) -> int:
        return len(arg.meta["val"].shape) if hasattr(arg, "meta") else len(arg.type.shape)

    def axis(self, dim: int, rank: int) -> int:
        return dim + rank if dim < 0 else dim

    def emit(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None) -> Value:
        """Add a one-output qir node (provenance: this node's layer) and return its output."""
        return self.emit_multi(op, inputs, attrs, 1)[0]

    def emit_multi(self, op: str, inputs, attrs=None, num_outputs: int = 1) -> list[Value]:
        # Nodes are named "<fx name>.<op>"; the fx name itself goes to the node's result value.
        node = self.graph.add_node(op, list(inputs), attrs or {}, name=f"{self.name}.{op.rsplit('.', 1)[-1]}",
                                   num_outputs=num_outputs, provenance=self.provenance)
        return list(node.outputs)

    def const(self, array, dtype=None) -> Value:
        array = np.asarray(array, dtype=dtype)
        return self.graph.add_constant(array, self.graph.unique_name(f"{self.name}_const"))

    def ints(self, values) -> Value:
        """An int64 1-D constant."""
        return self.const(np.asarray(list(values), dtype=np.int64).reshape(-1))

    # symbolic sizes
    def size(self, arg) -> int | Value:
        """An int, or the int64 [1] Value computing a symbolic size argument."""
        if hasattr(arg, "meta"):
            return self.importer.sym_value(arg)
        return int(arg)

    def shape_value(self, dims: Sequence[int | Value]) -> Value:
        """An int64 1-D shape from ints and [1] Values (a constant when all are ints)."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(dims)
        parts, run = [], []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                parts.append(self.ints(run))
                run = []
            parts.append(d)
        if run:
            parts.append(self.ints(run))
        return parts[0] if len(parts) == 1 else self.emit("tensor.concat", parts, {"axis": 0})

    def fail(self, message: str) -> QirError:
        return UnsupportedOpError(f"node {self.name} ({self.op}): {message}",
                                  hint="rewrite this part of the model or file an issue with the node")


def bind_args(node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in (``a``, ``b``... for operators)."""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None:
        return {name: arg for name, arg in zip("abcdefgh", node.args)} | dict(node.kwargs)
    out: dict[str, Any] = {}
    positional = list(node.args)
    for arg in schema.arguments:
        if positional and not arg.kwarg_only:
            out[arg.name] = positional.pop(0)
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def _children(spec) -> list:
    """The child specs of a pytree spec (``children()`` in newer torch, ``children_specs`` before)."""
    return list(spec.children()) if hasattr(spec, "children") else list(spec.children_specs)


class TorchImporter:
    def __init__(self, ep, where: str, name: str = "main"):
        self.ep = ep
        self.where = where
        self.graph = Graph(name)
        self.env: dict[Any, Any] = {}
        self.sym_env: dict[Any, Value] = {}
        self.dim_names = _dim_names(ep)

    def run(self) -> Graph:
        self._check_supported()
        out_names = self._output_names()
        self.graph._names.update(out_names)  # held for the outputs
        self._bind_inputs()
        for node in self.ep.graph.nodes:
            if node.op == "call_function" and not _is_symbolic(node.meta.get("val")):
                self._convert(node)
        self._set_outputs(out_names)
        return self.graph

    # -- checks ------------------------------------------------------------------------------
    def _check_supported(self) -> None:
        missing: dict[str, list[str]] = collections.OrderedDict()
        for node in self.ep.graph.nodes:
            # Size arithmetic is converted only where a converter needs it (sym_value reports
            # it then): trace-time checks on sizes (sym >= 2) never reach the graph.
            if node.op == "call_function" and lookup(op_key(node.target)) is None \
                    and not _is_symbolic(node.meta.get("val")):
                missing.setdefault(op_key(node.target), []).append(node.name)
        if missing:
            lines = [f"  {op} ×{len(names)} (e.g. {', '.join(names[:3])})" for op, names in missing.items()]
            raise UnsupportedOpError(
                f"{self.where}: {len(missing)} unsupported op type(s):\n" + "\n".join(lines),
                hint="these ATen ops have no qir converter yet (higher-order ops such as torch.cond "
                     "cannot be expressed yet); please file an issue with the list")

    # -- names -------------------------------------------------------------------------------
    def layer_of(self, node) -> str:
        """The user's layer (module path, e.g. ``layer1.0.conv1``) a node came from, else its name."""
        stack = node.meta.get("nn_module_stack") or {}
        path = next(reversed(stack.values()), ("", None))[0] if stack else ""
        # torch names a missing stack "_empty_nn_module_stack_from_metadata_hook": no layer.
        return node.name if not path or path.startswith("_empty_nn_module_stack") else path

    def _output_names(self) -> list[str]:
        specs = [s for s in self.ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
        spec = getattr(self.ep.call_spec, "out_spec", None)
        keys = None
        if spec is not None and spec.type is dict and spec.num_leaves == len(specs) and \
                all(c.num_leaves == 1 for c in _children(spec)):
            keys = [_NAME_RE.sub("_", str(k)) for k in spec.context]
        if keys is None or len(set(keys)) != len(keys):
            keys = ["output"] if len(specs) == 1 else [f"output_{i}" for i in range(len(specs))]
        return keys

    # -- inputs ------------------------------------------------------------------------------
    def _bind_inputs(self) -> None:
        placeholders = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        state = self.ep.state_dict
        consts = getattr(self.ep, "constants", {}) or {}
        for spec in self.ep.graph_signature.input_specs:
            kind = spec.kind.name
            arg_name = getattr(spec.arg, "name", None)
            node = placeholders.get(arg_name)
            if kind == "USER_INPUT":
                if node is None or not hasattr(node.meta.get("val"), "dtype"):
                    # A Python constant input: torch.export specialized the program on it.
                    if node is not None:
                        self.env[node] = getattr(spec.arg, "value", node.meta.get("val"))
                    continue
                self.env[node] = self.graph.add_input(_NAME_RE.sub("_", arg_name), self.tensor_type(node.meta["val"]))
            elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                tensor = state[spec.target] if spec.target in state else consts[spec.target]
                self.env[node] = self.graph.add_constant(to_array(tensor), spec.target)
            else:
                raise UnsupportedOpError(f"{self.where}: input {arg_name!r} of kind {kind} is not supported",
                                         hint="only tensors, parameters, buffers and constants can be inputs")

    def tensor_type(self, meta) -> TensorType:
        return TensorType(to_dtype(meta.dtype), tuple(self._dim(sym_expr(d)) for d in meta.shape))

    def _dim(self, expr):
        if isinstance(expr, int):
            return expr
        if getattr(expr, "is_Integer", False):
            return int(expr)
        if getattr(expr, "is_Symbol", False):
            return self.dim_names.get(str(expr), str(expr))
        return None  # an expression of symbols: qir keeps what it infers

    # -- nodes -------------------------------------------------------------------------------
    def value_of(self, node) -> Value:
        if node in self.sym_env or _is_symbolic(node.meta.get("val")):
            return self.sym_value(node)
        value = self.env[node]
        if not isinstance(value, Value):
            raise UnsupportedOpError(f"{self.where}: node {node.name} is used as a tensor but is "
                                     f"{type(value).__name__}")
        return value

    def sym_value(self, node) -> Value:
        """The int64 [1] Value of a symbolic size node, converted on first use."""
        if node not in self.sym_env:
            ctx = ConvertContext(self, node)
            conv = lookup(ctx.op)
            if conv is None:
                raise UnsupportedOpError(f"{self.where}: node {node.name}: the size arithmetic {ctx.op} "
                                         f"is not supported", hint="please file an issue with the model")
            self.sym_env[node] = self._call(ctx, conv)
        return self.sym_env[node]

    def _call(self, ctx: ConvertContext, conv):
        try:
            return conv(ctx)
        except QirError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{self.where}: node {ctx.name} ({ctx.op}) cannot be converted: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def _convert(self, node) -> None:
        ctx = ConvertContext(self, node)
        first_new = len(self.graph.nodes)
        result = self._call(ctx, lookup(ctx.op))
        meta = node.meta.get("val")
        if isinstance(result, Value):
            result = self._conform(ctx, result, meta)
            self._name_result(result, node.name, first_new)
        elif isinstance(result, (list, tuple)) and isinstance(meta, (list, tuple)):
            result = [self._conform(ctx, r, m) if isinstance(r, Value) else r for r, m in zip(result, meta)]
            for i, r in enumerate(result):
                if isinstance(r, Value):
                    self._name_result(r, f"{node.name}.{i}", first_new)
        self.env[node] = result

    def _name_result(self, value: Value, name: str, first_new: int) -> None:
        """Give a value made by this conversion the fx node's name, as torch prints the program."""
        if value.producer in self.graph.nodes[first_new:] and name not in self.graph._names:
            self.graph.rename(value, name)

    def _conform(self, ctx: ConvertContext, value: Value, meta) -> Value:
        """``value`` with torch's dtype (a cast if a converter's result differs) and its shape
        refined from torch's: ints and Dim names where qir's inference has unknown dims."""
        if not hasattr(meta, "dtype") or not isinstance(value.type, TensorType):
            return value
        dtype = to_dtype(meta.dtype, f"node {ctx.name}: ")
        if value.type.dtype != dtype:
            value = ctx.emit("elementwise.cast", [value], {"to": dtype})
        if value.producer is None:
            return value
        torch_dims = [self._dim(sym_expr(d)) for d in meta.shape]
        shape = value.type.shape
        if shape is None or len(shape) != len(torch_dims):
            dims = tuple(d if d is not None else "?" for d in torch_dims)
        else:
            dims = tuple(t if t is not None else q for t, q in zip(torch_dims, shape))
        value.type = value.type.with_shape(dims)
        return value

    # -- outputs -----------------------------------------------------------------------------
    def _set_outputs(self, names: list[str]) -> None:
        specs = [s for s in self.ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
        nodes = {n.name: n for n in self.ep.graph.nodes}
        seen: set[int] = set()
        for spec, name in zip(specs, names):
            arg_name = getattr(spec.arg, "name", None)
            if arg_name not in nodes:
                raise UnsupportedOpError(f"{self.where}: output {name!r} is the Python constant "
                                         f"{getattr(spec.arg, 'value', None)!r}, not a tensor",
                                         hint="return tensors only")
            value = self.value_of(nodes[arg_name])
            self.graph._names.discard(name)
            if value.producer is None or id(value) in seen or value.graph is not self.graph:
                value = self.graph.add_node("tensor.identity", [value], name=self.graph.unique_name(f"{name}_identity"),
                                            output_names=[name], provenance=(arg_name,)).output
            else:
                self.graph.rename(value, name)
            seen.add(id(value))
            self.graph.outputs.append(value)


def load_torch(model: Any, example_inputs: Any = None, *, dynamic_shapes: Any = None) -> Graph:
    """Import a PyTorch model as a verified qir Graph, through ``torch.export`` (ATen IR).

    ``model`` is an ``nn.Module`` (exported in eval mode with ``example_inputs``, a tuple of
    the forward's positional arguments, and ``dynamic_shapes`` as ``torch.export.export`` takes
    them, e.g. ``{"x": {0: torch.export.Dim("batch")}}``), an ``ExportedProgram``, or the path
    of a ``.pt2`` file written by ``torch.export.save``. Dims made dynamic become symbolic dims
    named after their ``Dim`` (torch's symbol name, e.g. ``s77``, where the name was not kept,
    as in ``.pt2`` files). Raises UnsupportedOpError listing every ATen op qir cannot convert,
    and ModelLoadError when torch.export cannot capture the model (data-dependent control flow).
    """
    from qir.ir.verifier import verify

    ep, where = export_program(model, example_inputs, dynamic_shapes)
    try:
        ep = decompose(ep)
    except Exception as exc:
        raise ModelLoadError(f"{where}: torch could not decompose the program to core ATen: "
                             f"{_first_line(exc)}") from None
    name = _NAME_RE.sub("_", type(model).__name__) if hasattr(model, "forward") else "main"
    graph = TorchImporter(ep, where, name).run()
    graph.metadata["torch.version"] = torch_module().__version__
    verify(graph)
    return graph
