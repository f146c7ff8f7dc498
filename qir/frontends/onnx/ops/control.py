"""ONNX → qir converters for the control family: If, Loop, Scan, sequences and optionals.

Branches and bodies are converted into qir subgraphs with ``ctx.subgraph``. Scan-8 (batched,
with sequence_lens) is upgraded to the Scan-9 form by looping over the batch: a control.loop
whose body picks one batch entry of every input and scans it.
"""

from __future__ import annotations

import onnx

from qir.frontends.onnx.dtypes import from_dtype
from qir.frontends.onnx.registry import converter, simple
from qir.ir.graph import Graph
from qir.ir.types import DType, OptionalType, SequenceType, TensorType, Type


def _type_proto(t: Type | None) -> onnx.TypeProto | None:
    """An ONNX TypeProto with the element type of ``t`` (shape left open: it may vary per iteration)."""
    if isinstance(t, TensorType):
        return onnx.helper.make_tensor_type_proto(from_dtype(t.dtype), None)
    if isinstance(t, SequenceType):
        elem = _type_proto(t.elem)
        return None if elem is None else onnx.helper.make_sequence_type_proto(elem)
    if isinstance(t, OptionalType):
        elem = _type_proto(t.elem)
        return None if elem is None else onnx.helper.make_optional_type_proto(elem)
    return None


def _untyped(tp: onnx.TypeProto) -> bool:
    kind = tp.WhichOneof("value")
    return kind is None or (kind == "tensor_type" and tp.tensor_type.elem_type == 0)


def _body(ctx, attr: str, input_types: list[Type | None], parent: Graph | None = None) -> Graph:
    """Convert body ``attr``; inputs the model left untyped get the types the op feeds them."""
    proto = ctx.attrs[attr]
    if any(_untyped(vi.type) for vi in proto.input):
        proto = onnx.GraphProto.FromString(proto.SerializeToString())
        for vi, t in zip(proto.input, input_types):
            fill = _type_proto(t) if _untyped(vi.type) else None
            if fill is not None:
                vi.type.CopyFrom(fill)
    return ctx.importer.convert_graph(proto, parent=parent or ctx.graph, outer=ctx.scope)


def _type(value) -> Type | None:
    return None if value is None else value.type


def _elem(value) -> Type | None:
    """The type of one element of a scanned tensor or of a sequence."""
    t = _type(value)
    if isinstance(t, SequenceType):
        return t.elem
    return TensorType(t.dtype, None) if isinstance(t, TensorType) else t


@converter("If", qir_op="control.if")
def if_(ctx):
    attrs = {"then_branch": ctx.subgraph("then_branch"), "else_branch": ctx.subgraph("else_branch")}
    return ctx.emit("control.if", ctx.inputs, attrs)


@converter("Loop", qir_op="control.loop")
def loop(ctx):
    types = [TensorType(DType.INT64, ()), TensorType(DType.BOOL, ())] + [_type(v) for v in ctx.inputs[2:]]
    return ctx.emit("control.loop", ctx.inputs, {"body": _body(ctx, "body", types)})


def _rank(t: Type | None) -> int | None:
    return t.rank if isinstance(t, TensorType) else None


def _axis(axis: int, rank: int | None) -> int:
    """``axis`` made non-negative when the rank is known at import."""
    return axis % rank if rank and axis < 0 else axis


def _scan_attrs(ctx, num_scan_inputs: int) -> dict:
    a = ctx.attrs
    return {"num_scan_inputs": num_scan_inputs,
            "scan_input_axes": tuple(a.get("scan_input_axes", ())),
            "scan_input_directions": tuple(a.get("scan_input_directions", a.get("directions", ()))),
            "scan_output_axes": tuple(a.get("scan_output_axes", ())),
            "scan_output_directions": tuple(a.get("scan_output_directions", ()))}


@converter("Scan", qir_op="control.scan", since_version=9)
def scan(ctx):
    attrs = _scan_attrs(ctx, int(ctx.attrs["num_scan_inputs"]))
    n = len(ctx.inputs) - attrs["num_scan_inputs"]
    types = [_type(v) for v in ctx.inputs[:n]] + [_elem(v) for v in ctx.inputs[n:]]
    body = _body(ctx, "body", types)
    attrs["scan_input_axes"] = tuple(_axis(a, _rank(_type(v)))
                                     for a, v in zip(attrs["scan_input_axes"], ctx.inputs[n:]))
    out_ranks = [_rank(v.type) for v in body.outputs[n:]]
    attrs["scan_output_axes"] = tuple(_axis(a, None if r is None else r + 1)
                                      for a, r in zip(attrs["scan_output_axes"], out_ranks))
    return ctx.emit("control.scan", ctx.inputs, {"body": body, **attrs})


@converter("Scan", since_version=8)
def scan8(ctx):
    """Scan-8: inputs (sequence_lens?, states..., scans...) all carry a leading batch axis.

    Becomes loop b in range(batch): scan9(states[b]..., scans[b]...), whose outputs the loop
    stacks back along the batch axis.
    """
    seq_lens = ctx.inputs[0] if ctx.inputs else None
    if seq_lens is not None:
        raise ctx.fail("Scan-8 with sequence_lens is not supported; re-export the model at opset 9+")
    values = ctx.inputs[1:]
    m = int(ctx.attrs["num_scan_inputs"])
    # Per-batch entries: split each input into a sequence once, pick entry b in the body.
    seqs = [ctx.emit("control.split_to_sequence", [v], {"axis": 0, "keepdims": 0}, num_outputs=1)[0]
            for v in values]
    batch = ctx.emit("control.sequence_length", [seqs[-1]], num_outputs=1)[0]
    body = Graph(ctx.graph.unique_name(f"{ctx.name}_batch"), parent=ctx.graph)
    index = body.add_input(body.unique_name("b"), TensorType(DType.INT64, ()))
    cond = body.add_input(body.unique_name("cond"), TensorType(DType.BOOL, ()))
    entries = [body.add_node("control.sequence_at", [s, index], name=body.unique_name(f"{ctx.name}_at"),
                             provenance=(ctx.name,)).output
               for s in seqs]
    inner = _body(ctx, "body", [_elem(v) for v in values], parent=body)
    attrs = _scan_attrs(ctx, m)
    attrs.pop("scan_input_axes")  # Scan-8 scans axis 1, which is axis 0 once the batch is picked
    step = body.add_node("control.scan", entries, {"body": inner, **attrs},
                         name=body.unique_name(f"{ctx.name}_scan"), num_outputs=len(inner.outputs),
                         provenance=(ctx.name,))
    body.outputs = [cond, *step.outputs]
    return ctx.emit("control.loop", [batch, None], {"body": body})


simple("SequenceConstruct", "control.sequence_construct", since_version=11)
simple("SequenceInsert", "control.sequence_insert", since_version=11)
simple("SequenceAt", "control.sequence_at", since_version=11)
simple("SequenceErase", "control.sequence_erase", since_version=11)
simple("SequenceLength", "control.sequence_length", since_version=11)
simple("OptionalHasElement", "control.optional_has_element", since_version=15)
simple("OptionalGetElement", "control.optional_get_element", since_version=15)


@converter("SplitToSequence", qir_op="control.split_to_sequence", since_version=11)
def split_to_sequence(ctx):
    attrs = {"axis": _axis(int(ctx.attrs.get("axis", 0)), _rank(_type(ctx.inputs[0]))),
             "keepdims": int(ctx.attrs.get("keepdims", 1))}
    return ctx.emit("control.split_to_sequence", ctx.inputs, attrs)


@converter("ConcatFromSequence", qir_op="control.concat_from_sequence", since_version=11)
def concat_from_sequence(ctx):
    new_axis = int(ctx.attrs.get("new_axis", 0))
    rank = _rank(_elem(ctx.inputs[0]))
    axis = _axis(int(ctx.attrs["axis"]), None if rank is None else rank + new_axis)
    return ctx.emit("control.concat_from_sequence", ctx.inputs, {"axis": axis, "new_axis": new_axis})


@converter("SequenceEmpty", qir_op="control.sequence_empty", since_version=11)
def sequence_empty(ctx):
    code = int(ctx.attrs.get("dtype", 0) or 0)
    return ctx.emit("control.sequence_empty", [], {"dtype": ctx.dtype(code) if code else DType.FLOAT32})


@converter("SequenceMap", qir_op="control.sequence_map", since_version=17)
def sequence_map(ctx):
    types = [_elem(ctx.inputs[0])] + [_elem(v) if isinstance(_type(v), SequenceType) else _type(v)
                                      for v in ctx.inputs[1:]]
    return ctx.emit("control.sequence_map", ctx.inputs, {"body": _body(ctx, "body", types)})


@converter("Optional", qir_op="control.optional", since_version=15)
def optional(ctx):
    attrs = {"type": ctx.attrs["type"]} if "type" in ctx.attrs else {}
    return ctx.emit("control.optional", ctx.inputs, attrs)
