"""Textual IR and binary save/load: golden text, exact round trips, clear errors.

Golden files live in tests/ir/golden/; regenerate them with QIR_UPDATE_GOLDEN=1 after a
deliberate change of the syntax (and update docs/ir-text-format.md with it).
"""

from __future__ import annotations

import glob
import math
import os
import struct
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qir.errors import IRParseError, ModelLoadError, QirError
from qir.ir import serialize
from qir.ir.graph import Graph
from qir.ir.parser import parse_graph
from qir.ir.printer import format_type, is_splat, print_graph, splat
from qir.ir.types import DType, OptionalType, QuantParams, SequenceType, TensorType
from qir.ir.verifier import verify

GOLDEN = Path(__file__).with_name("golden")
F32 = DType.FLOAT32


def roundtrip(graph: Graph, *, inline_limit=16, check_verify: bool = True) -> Graph:
    """print → parse → print must be the identity; dumps/loads must give the same text."""
    weights: dict = {}
    text = print_graph(graph, weights, inline_limit=inline_limit)
    parsed = parse_graph(text, weights)
    assert print_graph(parsed, {}, inline_limit=inline_limit) == text
    if check_verify:
        verify(parsed)
    loaded = serialize.loads(serialize.dumps(graph))
    assert print_graph(loaded, {}) == print_graph(graph, {})
    return parsed


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits (element-wise equality for strings)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes() == \
        np.ascontiguousarray(b).reshape(-1).view(np.uint8).tobytes()


# -- golden graphs -----------------------------------------------------------------------

def digits_graph() -> Graph:
    """The DESIGN.md sketch: a small conv net with a large and a small constant."""
    g = Graph("digits")
    g.doc = "A tiny digit classifier."
    g.metadata["onnx.opset"] = "21"
    x = g.add_input("x", TensorType(F32, ("N", 1, 8, 8)))
    w1 = g.add_constant(np.linspace(-1, 1, 16 * 9, dtype=np.float32).reshape(16, 1, 3, 3), "w1")
    b1 = g.add_constant((np.arange(16, dtype=np.float32) - 8) / 16, "b1")
    conv = g.add_node("nn.conv", [x, w1, b1], {"auto_pad": "NOTSET", "dilations": (1, 1), "group": 1,
                                               "kernel_shape": (3, 3), "pads": (1, 1, 1, 1),
                                               "strides": (1, 1)}, name="conv1")
    relu = g.add_node("nn.relu", [conv.output], name="relu1", provenance=("Relu_3",))
    pool = g.add_node("nn.global_average_pool", [relu.output], name="pool")
    flat = g.add_node("tensor.flatten", [pool.output], {"axis": 1}, name="flatten")
    w2 = g.add_constant(np.linspace(-0.5, 0.5, 160, dtype=np.float32).reshape(16, 10), "w2")
    b2 = g.add_constant(np.array([0.1, -0.25, 1e-8, 3.5e10, 0, -0.0, 1, 2, 3, 4], dtype=np.float32), "b2")
    fc = g.add_node("linalg.gemm", [flat.output, w2, b2], {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
                    name="fc", output_names=["y"], provenance=("Gemm_7", "Add_8"))
    g.outputs = [fc.output]
    return g


def branches_graph() -> Graph:
    """If with a nested If: subgraphs that read values of the graphs around them."""
    g = Graph("branches")
    cond = g.add_input("cond", TensorType(DType.BOOL, ()))
    x = g.add_input("x", TensorType(F32, ("N", 3)))
    one = g.add_constant(np.float32(1.0), "one")

    then = Graph("then", parent=g)
    inner_then = Graph("inner_then", parent=then)
    r = inner_then.add_node("nn.relu", [x], name="relu", output_names=["r"])
    inner_then.outputs = [r.output]
    inner_else = Graph("inner_else", parent=then)
    inner_else.outputs = [x]
    nested = then.add_node("control.if", [cond], {"then_branch": inner_then, "else_branch": inner_else},
                           name="inner_if", output_names=["t"])
    then.outputs = [nested.output]

    orelse = Graph("else", parent=g)
    e = orelse.add_node("elementwise.add", [x, one], name="add_one", output_names=["e"])
    orelse.outputs = [e.output]
    node = g.add_node("control.if", [cond], {"then_branch": then, "else_branch": orelse},
                      name="if", output_names=["y"])
    g.outputs = [node.output]
    return g


def everything_graph() -> Graph:
    """Every feature of the text form on ops that need not exist (types are given)."""
    g = Graph("every thing")
    g.doc = 'doc with "quotes", a \\ backslash,\na newline and ünïcödé'
    g.metadata.update({"key": "value", "empty": "", "tab\tkey": "x"})
    a = g.add_input("a", TensorType(DType.UINT8, ("batch size", "?", 4),
                                    QuantParams(0.0123, 128, signed=False)))
    b = g.add_input("onnx::Weird/name:0", TensorType(DType.INT8, (4, 3),
                                                     QuantParams([0.5, 0.25, 0.125], [0, 0, 0], axis=1)))
    s = g.add_input("s", SequenceType(TensorType(DType.STRING, None)))
    o = g.add_input("o", OptionalType(SequenceType(TensorType(DType.FLOAT16, ()))))
    u = g.add_input("untyped", None)
    c = g.add_constant(np.array(["a", "b\"", ""], dtype=object), "strings")
    q = g.add_constant(np.array([1, -2, 3], dtype=np.int8), "q8",
                       type=TensorType(DType.INT8, (3,), QuantParams(0.5, 0, bitwidth=4)))
    sub = Graph("body", parent=g)
    i = sub.add_input("i", TensorType(DType.INT64, ()))
    sub.outputs = [i, a]
    attrs = {
        "int": -7, "big": 2**62, "bool": True, "float": 0.1, "whole": 2.0, "neg_zero": -0.0,
        "inf": math.inf, "ninf": -math.inf, "nan": math.nan,
        "str": "line\nbreak \"quoted\" \\ \x01 \u2028", "empty_list": (), "ints": (1, -2, 3),
        "floats": (0.5, 1e-300, 5e-324), "strs": ("x", ""), "nested": ((1, 2), ()),
        "tensor": np.array([[1.5, -2.0], [np.inf, np.nan]], dtype=np.float32),
        "big_tensor": np.arange(100, dtype=np.int64), "tensors": (np.array(3, dtype=np.int32), np.zeros((0, 2))),
        "dtype": DType.BFLOAT16, "type": TensorType(DType.INT4, ("N",)), "seq_type": SequenceType(TensorType(F32, (2,))),
        "graph": sub, "graphs": (sub, sub), "none": None, "odd key!": 1,
    }
    n1 = g.add_node("test.everything", [a, None, b, s, o, u, c, q, None], attrs, name="node one",
                    output_names=["out", "out 2"],
                    output_types=[TensorType(F32, ("batch size", "?", 4)), None], provenance=())
    n1.target = "hexagon"
    g.add_node("test.sink", [n1.outputs[1]], name="sink", output_types=[], provenance=("p1", "p 2"))
    g.outputs = [n1.outputs[0], a, n1.outputs[0]]
    return g


GOLDENS = {"digits": digits_graph, "branches": branches_graph, "everything": everything_graph}


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden_text(name):
    graph = GOLDENS[name]()
    weights: dict = {}
    text = print_graph(graph, weights)
    path = GOLDEN / f"{name}.qir"
    if os.environ.get("QIR_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")
    parsed = parse_graph(text, weights)
    assert print_graph(parsed) == text
    if name != "everything":  # its ops are made up
        verify(parsed)
    roundtrip(graph, check_verify=name != "everything")


def test_golden_files_read_back():
    """Each golden file parses and prints back to itself (its weights come from its builder)."""
    for path in sorted(GOLDEN.glob("*.qir")):
        text = path.read_text(encoding="utf-8")
        weights: dict = {}
        print_graph(GOLDENS[path.stem](), weights)
        assert print_graph(parse_graph(text, weights, source=str(path))) == text


def test_everything_keeps_structure():
    g = parse_graph(*_printed(everything_graph()))
    node = g.nodes[0]
    assert node.name == "node one" and node.target == "hexagon" and node.provenance == ()
    assert g.nodes[1].provenance == ("p1", "p 2")
    assert [v is None for v in node.inputs] == [False, True, False, False, False, False, False, False, True]
    assert [v.name for v in g.outputs] == ["out", "a", "out"] and g.outputs[0] is g.outputs[2]
    assert g.inputs[4].type is None and node.outputs[1].type is None
    assert g.inputs[0].type.shape == ("batch size", "?", 4)
    assert g.inputs[1].type.quant == QuantParams([0.5, 0.25, 0.125], [0, 0, 0], axis=1)
    assert g.constants["q8"].type.quant.bitwidth == 4
    assert g.doc == everything_graph().doc and g.metadata["tab\tkey"] == "x"
    attrs = node.attrs
    assert type(attrs["bool"]) is bool and type(attrs["int"]) is int and type(attrs["whole"]) is float
    assert math.copysign(1, attrs["neg_zero"]) == -1 and math.isnan(attrs["nan"])
    assert attrs["nested"] == ((1, 2), ()) and attrs["none"] is None and attrs["odd key!"] == 1
    assert attrs["floats"] == (0.5, 1e-300, 5e-324)
    assert attrs["dtype"] is DType.BFLOAT16 and attrs["type"] == TensorType(DType.INT4, ("N",))
    assert same_array(attrs["tensor"], everything_graph().nodes[0].attrs["tensor"])
    assert same_array(attrs["big_tensor"], np.arange(100, dtype=np.int64))
    body = attrs["graph"]
    assert body.parent is g and body.outputs[1] is g.inputs[0]  # an outer-scope reference
    assert attrs["graphs"][0].outputs[1] is g.inputs[0]
    for value in g.values():
        for use in value.uses:
            assert use.node.inputs[use.index] is value


def _printed(graph: Graph):
    weights: dict = {}
    return print_graph(graph, weights), weights


# -- dtypes and values -------------------------------------------------------------------

def _interesting(dtype: DType) -> np.ndarray:
    """Values of ``dtype`` that stress exact printing (all bit patterns for 8-bit floats)."""
    nd = dtype.numpy
    rng = np.random.default_rng(len(dtype.value))
    if dtype is DType.STRING:
        return np.array(["", "plain", 'q"uote', "back\\slash", "new\nline\ttab\r", "ünï 中文 🎉",
                         "\x00\x1f\x7f", "\ud800 lone surrogate", "\u2028\u00a0"], dtype=object)
    if dtype is DType.BOOL:
        return np.array([True, False, True])
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        real = np.float32 if dtype is DType.COMPLEX64 else np.float64
        parts = np.concatenate([rng.standard_normal(40).astype(real),
                                np.array([0, -0.0, np.inf, -np.inf, np.nan, 1e-30], dtype=real)])
        return parts.view(nd)
    if dtype.is_int:
        try:
            info = np.iinfo(nd)
        except ValueError:
            info = ml_dtypes.iinfo(nd)
        values = [int(info.min), int(info.max), 0, 1]
        values += rng.integers(int(info.min), int(info.max), 30, endpoint=True, dtype=np.int64 if dtype.is_signed
                               else np.uint64).tolist()
        return np.array(values, dtype=np.int64 if dtype.is_signed else np.uint64).astype(nd)
    if nd.itemsize == 1:
        bits = np.arange(256, dtype=np.uint8)
        if dtype in (DType.FLOAT4E2M1, DType.FLOAT6E2M3, DType.FLOAT6E3M2):
            bits = np.arange(16 if dtype is DType.FLOAT4E2M1 else 64, dtype=np.uint8)
        return bits.view(nd)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[nd.itemsize]
    bits = rng.integers(0, np.iinfo(uint).max, 300, dtype=uint, endpoint=True)
    specials = np.array([0, -0.0, 1, -1.5, np.inf, -np.inf, np.nan, -np.nan], dtype=np.float64)
    values = np.concatenate([bits.view(nd), specials.astype(nd)])
    payload = values[:1].copy()
    payload.view(uint)[0] = {2: 0x7E01, 4: 0x7FA00001, 8: 0x7FF0000000000ABC}[nd.itemsize]  # a NaN payload
    return np.concatenate([values, payload])


@pytest.mark.parametrize("dtype", list(DType), ids=lambda d: d.value)
def test_every_dtype_roundtrips_exactly(dtype):
    values = _interesting(dtype)
    g = Graph("dtypes")
    x = g.add_input("x", TensorType(dtype, ("N", "?", 3)))
    inline = g.add_constant(values[:5].copy(), "inline")
    scalar = g.add_constant(values[1:2].reshape(()).copy(), "scalar")
    big = g.add_constant(values.reshape(1, -1), "big")
    empty = g.add_constant(values[:0].reshape(0, 3), "empty")
    node = g.add_node("test.op", [x, inline, scalar, big, empty], {"t": values.reshape(-1, 1), "dt": dtype},
                      name="op", output_types=[TensorType(dtype, None)])
    g.outputs = [node.output]
    for limit in (16, None):  # with digests, then everything printed inline
        parsed = roundtrip(g, inline_limit=limit, check_verify=False)
        for name in ("inline", "scalar", "big", "empty"):
            assert same_array(parsed.constants[name].const, g.constants[name].const), (name, limit)
        assert same_array(parsed.nodes[0].attrs["t"], values.reshape(-1, 1))
        assert parsed.nodes[0].attrs["dt"] is dtype
        assert parsed.inputs[0].type == TensorType(dtype, ("N", "?", 3))


@pytest.mark.parametrize("dtype", [d for d in DType if d is not DType.STRING], ids=lambda d: d.value)
def test_splats_roundtrip_exactly(dtype, tmp_path):
    """A broadcast view prints as ``splat <value>`` (exact bits, NaN payloads too) and reads back
    as a broadcast view, in text, .qirb and .qir (no weights stored, so no sidecar)."""
    values = _interesting(dtype)
    g = Graph("splats")
    for i in range(len(values)):
        g.add_constant(splat(values[i], values.dtype, (3000, 1000)), f"s{i}")
    g.add_node("test.op", [], {"t": splat(values[0], values.dtype, (2, 5))}, name="op", output_types=[])
    weights: dict = {}
    text = print_graph(g, weights)
    assert not weights and text.count(" splat ") == len(values) + 1
    assert "tensor " + dtype.value + "[2,5] splat " in text
    parsed = roundtrip(g, check_verify=False)
    for i in range(len(values)):
        a, b = parsed.constants[f"s{i}"].const, g.constants[f"s{i}"].const
        assert is_splat(a) and not a.flags.writeable and a.shape == (3000, 1000) and a.dtype == b.dtype
        assert same_array(a[:1, :2], b[:1, :2])
    assert is_splat(parsed.nodes[0].attrs["t"])
    assert len(serialize.dumps(g)) < 100 + len(text)  # nothing but the text
    serialize.save(g, tmp_path / "m.qir")
    assert sorted(os.listdir(tmp_path)) == ["m.qir"]
    assert print_graph(serialize.load(tmp_path / "m.qir")) == text


def test_splat_text_forms():
    g = parse_graph("graph @g() -> (%a: f32[2,3], %b: i8[4]) {\n"
                    "  %a = const f32[2,3] splat -0.0\n  %b = const i8[4] splat -7\n  return %a, %b\n}")
    a, b = g.constants["a"].const, g.constants["b"].const
    assert is_splat(a) and np.signbit(a).all() and is_splat(b) and (b == -7).all()
    # a materialized array of equal elements prints as itself; one element is never a splat
    assert "splat" not in print_graph(_one_const(np.zeros((4, 4), np.float32)))
    assert "splat" not in print_graph(_one_const(splat(1.0, np.float32, (1, 1))))
    for bad in ("f32[3] splat [1.0]", "f32[3] splat", "i8[3] splat 300", "f32[3] splat 1.0 2.0"):
        with pytest.raises(IRParseError):
            parse_graph(f"graph @g() -> () {{\n  %a = const {bad}\n  return\n}}")


def _one_const(array: np.ndarray) -> Graph:
    g = Graph("g")
    g.add_constant(array, "c")
    return g


def test_float32_inline_is_exact_and_readable():
    text = print_graph(_const_graph(np.array([0.1, -0.0, 1e-45, 3.4028235e38, np.inf], dtype=np.float32)))
    assert "f32[5] [0.1, -0.0, 1e-45, 3.4028235e+38, inf]" in text
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    g = _const_graph(bits.view(np.float32))
    parsed = parse_graph(print_graph(g, inline_limit=None))
    assert same_array(parsed.constants["c"].const, g.constants["c"].const)


def test_float_attrs_and_quant_params_are_bit_exact():
    weird_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000123))[0]
    values = [0.1, -0.0, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan, -math.nan,
              weird_nan, 1 / 3]
    g = Graph("f")
    x = g.add_input("x", TensorType(F32, (2,), QuantParams(values[:6], list(range(6)), axis=0)))
    n = g.add_node("test.op", [x], {"fs": tuple(values), "f": weird_nan}, name="n", output_types=[None])
    g.outputs = [n.output]
    parsed = roundtrip(g, check_verify=False)
    bits = [struct.pack("<d", v) for v in parsed.nodes[0].attrs["fs"]]
    assert bits == [struct.pack("<d", v) for v in values]
    assert "nan:0x7ff8000000000123" in print_graph(g)
    assert parsed.inputs[0].type.quant == x.type.quant


def test_names_that_need_quotes():
    names = ["plain", "with space", "onnx::Add_12", "/model/conv/Conv_output_0", "", "ünï", '"q"', "new\nline",
             "123", "-", "a->b", "%x", "@y", "#c", "//comment"]
    g = Graph('graph "name"')
    values = [g.add_input(n, TensorType(F32, ("sym bol", "inf", "nan", "123", "?", "_", "true"))) for n in names]
    n = g.add_node("weird op-name", values, {"k e y": 1, "inf": 2}, name="node\tname",
                   output_names=["out put"], output_types=[None])
    g.outputs = [n.output]
    parsed = roundtrip(g, check_verify=False)
    assert [v.name for v in parsed.inputs] == names
    assert parsed.name == 'graph "name"' and parsed.nodes[0].name == "node\tname"
    assert parsed.nodes[0].op == "weird op-name" and set(parsed.nodes[0].attrs) == {"k e y", "inf"}
    assert parsed.inputs[0].type.shape == ("sym bol", "inf", "nan", "123", "?", "_", "true")


_texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)  # surrogates too
_scalars = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.none(), _texts, st.sampled_from(list(DType)))
_attr_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12)
_dims = st.lists(st.one_of(st.integers(0, 2**40), _texts), max_size=4)


def _same_attr(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_attr(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(attrs=st.dictionaries(_texts, _attr_values, max_size=5), names=st.lists(_texts, min_size=2, max_size=2,
       unique=True), dims=_dims, doc=_texts, provenance=st.lists(_texts, max_size=3))
def test_random_attributes_names_and_dims_roundtrip(attrs, names, dims, doc, provenance):
    g = Graph(names[0])
    g.doc = doc
    x = g.add_input(names[0], TensorType(DType.INT4, dims))
    node = g.add_node("test.op", [x, None], attrs, name=names[1], output_names=[names[1]],
                      output_types=[OptionalType(TensorType(F32, dims))], provenance=provenance)
    g.outputs = [node.output, x]
    parsed = roundtrip(g, check_verify=False)
    got = parsed.nodes[0]
    assert got.attrs.keys() == attrs.keys() and all(_same_attr(got.attrs[k], v) for k, v in attrs.items())
    assert got.provenance == tuple(provenance) and parsed.doc == doc
    assert [v.name for v in parsed.outputs] == [v.name for v in g.outputs]
    assert parsed.inputs[0].type == x.type


def test_op_names_that_are_keywords():
    g = Graph("k")
    x = g.add_input("x", TensorType(F32, (1,)))
    c = g.add_node("const", [x], name="c", output_types=[TensorType(F32, (1,))])
    for op in ("return", "doc", "meta", "graph", "inf", "_"):
        g.add_node(op, [c.output], name=f"n_{op}", output_types=[])
    g.outputs = [c.output]
    parsed = roundtrip(g, check_verify=False)
    assert [n.op for n in parsed.nodes] == ["const", "return", "doc", "meta", "graph", "inf", "_"]


def test_mangled_text_raises_only_parse_errors():
    """Random one-character edits of the golden files: parsed, or an IRParseError/QirError."""
    rng = np.random.default_rng(7)
    alphabet = list('%@#"[]{}()<>,=:?*-_ .0123456789aefinx\\\n')
    for name, build in sorted(GOLDENS.items()):
        text, weights = _printed(build())
        for _ in range(300):
            i = int(rng.integers(len(text)))
            edit = rng.integers(3)
            ch = str(rng.choice(alphabet))
            mangled = text[:i] + ("" if edit == 0 else ch) + text[i + (edit != 1):]
            try:
                parse_graph(mangled, weights)
            except QirError:
                pass


def test_format_type():
    assert format_type(TensorType(F32, None)) == "f32[*]"
    assert format_type(TensorType(F32, ())) == "f32[]"
    assert format_type(TensorType(DType.UINT8, ("N", 3, "?"), QuantParams(0.5, 3, signed=False))) == \
        "u8[N,3,?]{scale=0.5, zero_point=3, signed=false}"
    assert format_type(OptionalType(SequenceType(TensorType(DType.STRING, (2,))))) == "optional<seq<str[2]>>"
    assert str(TensorType(DType.INT4, ("batch size",))) == 'i4["batch size"]'


def test_shared_weights_are_stored_once():
    g = Graph("shared")
    data = np.arange(64, dtype=np.float32)
    g.add_constant(data, "a")
    g.add_constant(data.copy(), "b")
    g.add_constant(data.view(np.int32), "c")  # same bytes, other dtype
    weights: dict = {}
    text = print_graph(g, weights)
    assert len(weights) == 1
    parsed = parse_graph(text, weights)
    assert parsed.constants["c"].const.dtype == np.int32
    assert same_array(parsed.constants["c"].const, data.view(np.int32))


def _const_graph(array: np.ndarray) -> Graph:
    g = Graph("c")
    g.add_constant(array, "c")
    return g


# -- parse errors ------------------------------------------------------------------------

@pytest.mark.parametrize("text, where, words", [
    ("graph @g() -> () {\n  %y = nn.relu(%x) : f32[2] @r\n  return\n}", "2:16", "%x"),
    ("graph @g() -> () {\n  %c = const f64[2] [1.0]\n  return\n}", "2:21", "needs 2 elements"),
    ("graph @g(%x: f33[2]) -> () {\n  return\n}", "1:14", "unknown dtype"),
    ("graph @g(%x: f32[2]) -> (%x: f32[2]) {\n  return\n}", "2:3", "does not match"),
    ("graph @g(%x: f32[2]) -> (%x: f32[3]) {\n  return %x\n}", "1:26", "declared as f32[3]"),
    ("graph @g(%x: f32[2], %x: f32[2]) -> () {\n  return\n}", "1:22", "defined twice"),
    ("graph @g() -> () {\n  %c = const i8[1] [300]\n  return\n}", "2:21", "out of range"),
    ("graph @g() -> () {\n  %c = const f32[2] #sha256:" + "0" * 64 + "\n  return\n}", "2:21", "not in the weights"),
    ("graph @g() -> () {\n  return\n} extra", "3:3", "expected eof"),
    ("graph @g() -> () {\n  doc \"unterminated\n  return\n}", "2:7", "unterminated string"),
    ("graph @g() -> () {\n  %y = test.op() {a=1, a=2} : f32[1] @n\n  return\n}", "2:24", "given twice"),
    ("graph @g() -> () {\n  %y = test.op() : f32[1], f32[1] @n\n  return\n}", "2:8", "lists 2 type(s)"),
    ("graph @g() -> () {\n  %s = const str[1] [\"\\q\"]\n  return\n}", "2:22", "bad escape"),
    ("graph @g() -> (", "1:16", "end of text"),
])
def test_parse_errors_name_line_and_column(text, where, words):
    with pytest.raises(IRParseError) as info:
        parse_graph(text, source="t.qir")
    message = str(info.value)
    assert message.startswith(f"t.qir:{where}:"), message
    assert words in message, message


def test_comments_and_whitespace_are_ignored():
    text = "// a comment\ngraph @g(%x: f32[2])->(%y: f32[2]){%y=nn.relu(%x):f32[2]@r // trailing\nreturn %y}"
    g = parse_graph(text)
    verify(g)
    assert print_graph(g) == "graph @g(%x: f32[2]) -> (%y: f32[2]) {\n  %y = nn.relu(%x) : f32[2] @r\n  return %y\n}\n"


def test_types_may_be_left_to_inference_in_hand_written_text():
    g = parse_graph("graph @g(%x: f32[N,2]) -> (%y: f32[N,2]) {\n  %y = nn.relu(%x) @r\n  return %y\n}")
    assert g.outputs[0].type == TensorType(F32, ("N", 2))


# -- binary and files --------------------------------------------------------------------

def test_dumps_is_deterministic_and_loads_back():
    g = digits_graph()
    blob = serialize.dumps(g)
    assert blob[:4] == b"QIRB"
    assert serialize.dumps(digits_graph()) == blob
    loaded = serialize.loads(blob)
    assert serialize.dumps(loaded) == blob
    verify(loaded)
    w = loaded.constants["w1"].const
    assert w.flags.writeable and w.ctypes.data % 64 == 0 or not w.flags.owndata
    assert same_array(w, g.constants["w1"].const)


def test_bad_binaries_are_clear_errors():
    blob = serialize.dumps(digits_graph())
    bad_version = blob[:4] + struct.pack("<H", 99) + blob[6:]
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    cases = {
        b"PK\x03\x04junk": "does not start with",
        b"": "does not start with",
        bad_version: "version 99",
        blob[:-3]: "truncated",
        bytes(flipped): "checksum",
    }
    for data, words in cases.items():
        with pytest.raises(ModelLoadError, match=words):
            serialize.loads(data, source="m.qirb")


def test_save_load_text_with_sidecar(tmp_path):
    g = everything_graph()
    path = tmp_path / "m.qir"
    serialize.save(g, path)
    sidecar = tmp_path / "m.qir.weights.npz"
    assert sidecar.exists()
    assert sorted(os.listdir(tmp_path)) == ["m.qir", "m.qir.weights.npz"]  # no temp files left
    first = (path.read_bytes(), sidecar.read_bytes())
    serialize.save(g, path)
    assert (path.read_bytes(), sidecar.read_bytes()) == first  # deterministic, npz included
    loaded = serialize.load(path)
    assert print_graph(loaded) == print_graph(g)
    with np.load(sidecar, allow_pickle=False) as npz:  # a plain npz, keyed by digest
        assert all(key.startswith("sha256:") for key in npz.files)
    # without its sidecar the text is still readable, but not loadable
    sidecar.unlink()
    with pytest.raises(IRParseError, match="weights.npz"):
        serialize.load(path)


def test_save_load_strings_out_of_line(tmp_path):
    g = _const_graph(np.array([f"s{i}\n\"" for i in range(40)], dtype=object).reshape(5, 8))
    for name in ("s.qir", "s.qirb"):
        serialize.save(g, tmp_path / name)
        assert same_array(serialize.load(tmp_path / name).constants["c"].const, g.constants["c"].const)


def test_save_without_weights_removes_a_stale_sidecar(tmp_path):
    path = tmp_path / "m.qir"
    serialize.save(digits_graph(), path)
    serialize.save(_const_graph(np.zeros(2, np.float32)), path)
    assert not (tmp_path / "m.qir.weights.npz").exists()
    assert serialize.load(path).constants["c"].const.tolist() == [0, 0]


def test_save_load_binary_and_errors(tmp_path):
    g = branches_graph()
    serialize.save(g, tmp_path / "b.qirb")
    assert print_graph(serialize.load(tmp_path / "b.qirb")) == print_graph(g)
    assert os.listdir(tmp_path) == ["b.qirb"]
    with pytest.raises(QirError, match="extension"):
        serialize.save(g, tmp_path / "b.onnx")
    with pytest.raises(ModelLoadError, match="cannot read"):
        serialize.load(tmp_path / "missing.qir")
    with pytest.raises(QirError, match="cannot write"):
        serialize.save(g, tmp_path / "no" / "dir.qirb")
    corrupt = tmp_path / "c.qir"
    serialize.save(digits_graph(), corrupt)
    sidecar = tmp_path / "c.qir.weights.npz"
    data = bytearray(sidecar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sidecar.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError):
        serialize.load(corrupt)


def test_reference_target_runs_a_loaded_graph():
    from qir.ir.interpreter import Interpreter

    g = digits_graph()
    x = np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)
    expected = Interpreter(g).run({"x": x})[0]
    got = Interpreter(serialize.loads(serialize.dumps(g))).run({"x": x})[0]
    assert same_array(expected, got)


# -- the ONNX node test suite ------------------------------------------------------------

def _onnx_node_models():
    """(name, model) of every ONNX node test: from the test data when installed, else generated."""
    import onnx

    data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    paths = sorted(glob.glob(str(data / "*" / "model.onnx")))
    if paths:
        return [(Path(p).parent.name, p) for p in paths]
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return [(case.name, case.model) for case in collect_testcases("")]


def test_onnx_node_suite_roundtrips():
    """Every node-test model qir imports prints, parses, verifies and serializes identically."""
    from qir.frontends.onnx import load_onnx

    failures, done = [], 0
    for name, model in _onnx_node_models():
        try:
            graph = load_onnx(model)
        except QirError:
            continue  # an op qir does not support (yet)
        try:
            weights: dict = {}
            text = print_graph(graph, weights)
            parsed = parse_graph(text, weights, source=name)
            assert print_graph(parsed, {}) == text, "print(parse(text)) differs"
            verify(parsed)
            blob = serialize.dumps(graph)
            assert print_graph(serialize.loads(blob), {}) == text, "dumps/loads differs"
            done += 1
        except Exception as exc:  # collect them all: one report names every failing model
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, f"{len(failures)} of {done + len(failures)} models:\n" + "\n".join(failures)
    assert done > 100
