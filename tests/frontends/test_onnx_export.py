"""The ONNX exporter: graphs built with the Graph API, and import → export round trips of the
official ONNX node test models, checked by onnx.checker and run in onnxruntime and in qir."""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qir.errors import QirError, UnsupportedOpError
from qir.frontends.onnx import export_onnx, load_onnx
from qir.frontends.onnx import registry
from qir.ir.graph import Graph
from qir.ir.opdef import Attr, has_op, op
from qir.ir.ops.infer import same_as
from qir.ir.types import DType, OptionalType, TensorType
from qir.ir.verifier import verify
from qir.ir.interpreter import Interpreter

F32 = DType.FLOAT32
ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits" / "digits.onnx"
NODE_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


# -- test-only ops, so these tests do not depend on which op families exist yet -------------
# Each maps to a real ONNX op through EXPORT_NAMES (patched per test, like a converter would).

def _define_test_ops() -> None:
    if has_op("exporttest.clip"):
        return

    @op("exporttest.clip", inputs=["input", "min?", "max?"], outputs=["output"], infer=same_as(0))
    def clip(x, lo=None, hi=None):
        return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)

    @op("exporttest.leaky_relu", inputs=["X"], outputs=["Y"], infer=same_as(0),
        attrs={"alpha": Attr("float", 0.01)})
    def leaky_relu(x, alpha):
        return np.where(x >= 0, x, x * np.float32(alpha))

    def _infer_cast(ctx):
        return [TensorType(ctx.attrs["to"], ctx.shape(0))]

    @op("exporttest.cast", inputs=["input"], outputs=["output"], infer=_infer_cast,
        attrs={"to": Attr("dtype"), "saturate": Attr("int", 1), "round_mode": Attr("str", "up")})
    def cast(x, to, saturate, round_mode):
        return x.astype(to.numpy)

    def _infer_transpose(ctx):
        shape = ctx.shape(0)
        return [TensorType(ctx.dtype(0), None if shape is None else [shape[p] for p in ctx.attrs["perm"]])]

    @op("exporttest.transpose", inputs=["data"], outputs=["transposed"], infer=_infer_transpose,
        attrs={"perm": Attr("ints")})
    def transpose(x, perm):
        return np.transpose(x, perm)

    def _infer_if(ctx):
        return [v.type for v in ctx.attrs["then_branch"].outputs]

    @op("exporttest.if", inputs=["cond"], outputs=["outputs*"], infer=_infer_if, needs_runner=True,
        attrs={"then_branch": Attr("graph"), "else_branch": Attr("graph")})
    def if_(cond, then_branch, else_branch, run_graph):
        return tuple(run_graph(then_branch if bool(cond) else else_branch, []))

    @op("exporttest.binarizer", inputs=["X"], outputs=["Y"], infer=same_as(0),
        attrs={"threshold": Attr("float", 0.0)})
    def binarizer(x, threshold):
        return (x > threshold).astype(x.dtype)

    @op("exporttest.gelu", inputs=["X"], outputs=["Y"], infer=same_as(0),
        attrs={"approximate": Attr("str", "none")})
    def gelu(x, approximate):
        assert approximate == "tanh"
        inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
        return (0.5 * x * (1 + np.tanh(inner))).astype(x.dtype)

    def _infer_optional(ctx):
        return [OptionalType(ctx.attrs["type"])]

    @op("exporttest.optional", inputs=["input?"], outputs=["output"], infer=_infer_optional,
        attrs={"type": Attr("type", None)})
    def optional(x=None, type=None):
        return x

    for name in ("exporttest.unmapped_a", "exporttest.unmapped_b"):
        op(name, inputs=["x"], outputs=["y"], infer=same_as(0))(lambda x: x)


_TEST_EXPORTS = {
    "exporttest.clip": ("", "Clip"), "exporttest.leaky_relu": ("", "LeakyRelu"),
    "exporttest.cast": ("", "Cast"), "exporttest.transpose": ("", "Transpose"),
    "exporttest.if": ("", "If"), "exporttest.binarizer": ("ai.onnx.ml", "Binarizer"),
    "exporttest.optional": ("", "Optional"), "exporttest.gelu": ("", "Gelu"),
}


@pytest.fixture(autouse=True)
def test_ops(monkeypatch):
    _define_test_ops()
    registry._load_builtin_converters()
    for name, target in _TEST_EXPORTS.items():
        monkeypatch.setitem(registry.EXPORT_NAMES, name, target)


def check_and_run(model: onnx.ModelProto, feeds: dict) -> list:
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# -- graphs built with the Graph API ---------------------------------------------------------

def test_inputs_outputs_keep_names_order_and_types():
    g = Graph("two")
    x = g.add_input("x", TensorType(F32, ("N", 3, "?")))
    y = g.add_input("y", TensorType(F32, (2,)))
    a = g.add_node("exporttest.leaky_relu", [x], name="act", output_names=["act_out"])
    b = g.add_node("exporttest.clip", [y], name="clip", output_names=["clipped"])
    g.outputs = [b.output, a.output]
    model = export_onnx(g)
    gp = model.graph
    assert [i.name for i in gp.input] == ["x", "y"]
    assert [o.name for o in gp.output] == ["clipped", "act_out"]
    dims = gp.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 3
    assert not dims[2].HasField("dim_value") and not dims[2].HasField("dim_param")
    assert gp.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    xs, ys = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4), np.array([-1, 5], np.float32)
    clipped, act = check_and_run(model, {"x": xs, "y": ys})
    np.testing.assert_allclose(act, np.where(xs >= 0, xs, xs * 0.01), rtol=1e-6)
    np.testing.assert_array_equal(clipped, ys)


def test_constants_become_initializers_and_optional_inputs_are_empty():
    g = Graph("clip")
    x = g.add_input("x", TensorType(F32, (4,)))
    hi = g.add_constant(np.float32(0.5), "hi")
    n = g.add_node("exporttest.clip", [x, None, hi], name="c")
    g.outputs = [n.output]
    model = export_onnx(g)
    assert [t.name for t in model.graph.initializer] == ["hi"]
    assert list(model.graph.node[0].input) == ["x", "", "hi"]
    (out,) = check_and_run(model, {"x": np.array([-3, 0, 0.25, 2], np.float32)})
    np.testing.assert_array_equal(out, [-3, 0, 0.25, 0.5])


def test_attributes_defaults_omitted_dtypes_and_tuples_converted():
    g = Graph("attrs")
    x = g.add_input("x", TensorType(F32, (2, 3)))
    a = g.add_node("exporttest.leaky_relu", [x], name="default_alpha")
    b = g.add_node("exporttest.leaky_relu", [a.output], {"alpha": 0.2}, name="alpha")
    c = g.add_node("exporttest.cast", [b.output], {"to": DType.FLOAT16}, name="cast")
    t = g.add_node("exporttest.transpose", [c.output], {"perm": (1, 0)}, name="t")
    g.outputs = [t.output]
    model = export_onnx(g)
    nodes = {n.name: n for n in model.graph.node}
    # LeakyRelu has a function body, whose expansion by onnx.checker ignores attribute defaults:
    # such ops get every attribute written out.
    assert attrs_of(nodes["default_alpha"])["alpha"] == pytest.approx(0.01)
    assert attrs_of(nodes["alpha"])["alpha"] == pytest.approx(0.2)
    cast = attrs_of(nodes["cast"])
    assert cast["to"] == onnx.TensorProto.FLOAT16
    assert "saturate" not in cast  # equal to ONNX's default
    assert "round_mode" not in cast
    assert attrs_of(nodes["t"])["perm"] == [1, 0]
    xs = np.array([[-1, 2, 3], [4, -5, 6]], np.float32)
    (out,) = check_and_run(model, {"x": xs})
    assert out.dtype == np.float16 and out.shape == (3, 2)
    expected = np.where(xs >= 0, xs, xs * 0.01 * 0.2).astype(np.float16).T
    np.testing.assert_allclose(out, expected, rtol=1e-3)


def test_subgraphs_with_outer_scope_references_and_own_constants():
    g = Graph("cond")
    cond = g.add_input("cond", TensorType(DType.BOOL, ()))
    x = g.add_input("x", TensorType(F32, (3,)))
    then = Graph("then", parent=g)
    k = then.add_constant(np.float32(-1.0), "then_k")
    clip = then.add_node("exporttest.clip", [x, k], name="then_clip")  # x: outer scope
    then.outputs = [clip.output]
    other = Graph("else", parent=g)
    other.outputs = [x]  # an outer value straight through: needs an Identity in ONNX
    node = g.add_node("exporttest.if", [cond], {"then_branch": then, "else_branch": other},
                      name="if", num_outputs=1)
    g.outputs = [node.output]
    verify(g)
    model = export_onnx(g)
    if_node = model.graph.node[0]
    assert if_node.op_type == "If"
    branches = attrs_of(if_node)
    assert [t.name for t in branches["then_branch"].initializer] == ["then_k"]
    assert branches["then_branch"].node[0].input[0] == "x"
    xs = np.array([-3, 0, 2], np.float32)
    (yes,) = check_and_run(model, {"cond": np.array(True), "x": xs})
    (no,) = check_and_run(model, {"cond": np.array(False), "x": xs})
    np.testing.assert_array_equal(yes, [-1, 0, 2])
    np.testing.assert_array_equal(no, xs)


def test_string_attribute():
    g = Graph("gelu")
    x = g.add_input("x", TensorType(F32, (3,)))
    n = g.add_node("exporttest.gelu", [x], {"approximate": "tanh"}, name="gelu")
    g.outputs = [n.output]
    model = export_onnx(g)
    assert attrs_of(model.graph.node[0]) == {"approximate": b"tanh"}
    xs = np.array([-1, 0, 2], np.float32)
    (out,) = check_and_run(model, {"x": xs})
    np.testing.assert_allclose(out, Interpreter(g).run({"x": xs})[0], rtol=1e-5, atol=1e-6)


def test_ml_domain_gets_its_opset_import():
    g = Graph("ml")
    x = g.add_input("x", TensorType(F32, (3,)))
    n = g.add_node("exporttest.binarizer", [x], {"threshold": 0.5}, name="bin")
    g.outputs = [n.output]
    model = export_onnx(g)
    imports = {o.domain: o.version for o in model.opset_import}
    assert imports["ai.onnx.ml"] >= 1 and "" in imports
    assert model.graph.node[0].domain == "ai.onnx.ml"
    (out,) = check_and_run(model, {"x": np.array([0, 0.6, 1], np.float32)})
    np.testing.assert_array_equal(out, [0, 1, 1])


def test_type_attribute_becomes_type_proto():
    g = Graph("opt")
    x = g.add_input("x", TensorType(F32, (2,)))
    n = g.add_node("exporttest.optional", [x], {"type": TensorType(F32, None)}, name="opt")
    g.outputs = [n.output]
    model = export_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    attr = attrs_of(model.graph.node[0])["type"]
    assert attr.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.HasField("optional_type")


def test_opset_from_metadata_or_newest_op_versions():
    g = Graph("opset")
    x = g.add_input("x", TensorType(F32, (2,)))
    n = g.add_node("exporttest.leaky_relu", [x], name="a")
    g.outputs = [n.output]
    since = onnx.defs.get_schema("LeakyRelu", onnx.defs.onnx_opset_version(), "").since_version
    assert export_onnx(g).opset_import[0].version == since  # no metadata: smallest that fits
    g.metadata["onnx.opset"] = "9"
    assert export_onnx(g).opset_import[0].version == since  # raised to what LeakyRelu needs
    g.metadata["onnx.opset"] = str(onnx.defs.onnx_opset_version())
    assert export_onnx(g).opset_import[0].version == onnx.defs.onnx_opset_version()
    with pytest.raises(QirError, match="LeakyRelu"):
        export_onnx(g, opset=1)


def test_node_names_and_provenance():
    g = Graph("prov")
    x = g.add_input("x", TensorType(F32, (2,)))
    n = g.add_node("exporttest.leaky_relu", [x], name="fused", provenance=("conv1", "bn1"))
    g.outputs = [n.output]
    node = export_onnx(g).graph.node[0]
    assert node.name == "fused"
    assert "conv1" in node.doc_string and "bn1" in node.doc_string


def test_unmapped_ops_are_all_listed_at_once():
    g = Graph("unmapped")
    x = g.add_input("x", TensorType(F32, (2,)))
    a = g.add_node("exporttest.unmapped_a", [x], name="first_a")
    b = g.add_node("exporttest.unmapped_b", [a.output], name="only_b")
    c = g.add_node("exporttest.unmapped_a", [b.output], name="second_a")
    g.outputs = [c.output]
    with pytest.raises(QirError) as info:
        export_onnx(g)
    msg = str(info.value)
    assert "exporttest.unmapped_a ×2" in msg and "exporttest.unmapped_b ×1" in msg
    assert "first_a" in msg and "only_b" in msg


def test_exported_model_reimports_to_the_same_graph_shape():
    g = Graph("re")
    x = g.add_input("x", TensorType(F32, ("N", 2)))
    n = g.add_node("exporttest.leaky_relu", [x], {"alpha": 0.5}, name="lr", output_names=["y"])
    g.outputs = [n.output]
    model = export_onnx(g)
    assert "onnx.opset" not in {p.key for p in model.metadata_props}
    if ("", "LeakyRelu") not in registry.supported_ops():
        pytest.skip("no LeakyRelu converter yet")
    g2 = load_onnx(model)
    assert [v.name for v in g2.inputs] == ["x"] and [v.name for v in g2.outputs] == ["y"]
    assert g2.inputs[0].type == TensorType(F32, ("N", 2))


# -- round trips of the official node test models --------------------------------------------

ROUND_TRIP_SHARDS = 4
MAX_CASES_PER_SHARD = 150
#: Round trips that fail because of a bug elsewhere in qir (reported; remove when fixed).
KNOWN_QIR_BUGS = {
    # control.loop types its output optional<seq<f32>> (the loop-carried input's type) where the
    # body yields seq<f32>; onnx.checker then rejects the exported value_info.
    "test_loop16_seq_none",
    # The Scan-8 converter's Loop body claims the name "y", so the graph output becomes "y_20".
    "test_scan_sum",
}


@lru_cache(maxsize=1)
def node_cases() -> list[tuple[str, onnx.ModelProto, list, float, float]]:
    """(name, model, inputs, rtol, atol) of every official node test (first data set)."""
    if NODE_DATA.is_dir():
        return [c for c in map(_load_case_dir, sorted(NODE_DATA.iterdir())) if c is not None]
    # This onnx install ships no node data: build the same cases from onnx's generators.
    from onnx.backend.test.case import node

    with np.errstate(all="ignore"):
        cases = node.collect_testcases(None)
    out = []
    for case in cases:
        if case.model is None or not case.data_sets:
            continue
        inputs = list(case.data_sets[0][0])
        out.append((case.name, case.model, inputs, case.rtol, case.atol))
    return sorted(out, key=lambda c: c[0])


def _load_case_dir(folder: Path):
    model_path, data = folder / "model.onnx", folder / "test_data_set_0"
    if not model_path.is_file() or not data.is_dir():
        return None
    inputs = []
    for pb in sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1])):
        tensor = onnx.TensorProto()
        try:
            tensor.ParseFromString(pb.read_bytes())
            inputs.append(onnx.numpy_helper.to_array(tensor))
        except Exception:
            return None  # a sequence or optional input
    return folder.name, onnx.load(str(model_path)), inputs, 1e-3, 1e-7


def _shard(name: str) -> int:
    return zlib.crc32(name.encode()) % ROUND_TRIP_SHARDS


def _feeds(model: onnx.ModelProto, inputs: list) -> dict | None:
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    def plain(x) -> bool:  # a tensor or a sequence of tensors
        return isinstance(x, np.ndarray) or (isinstance(x, list) and all(isinstance(e, np.ndarray) for e in x))

    if len(names) != len(inputs) or not all(plain(x) for x in inputs):
        return None  # optionals: outside what this round trip checks
    return dict(zip(names, inputs))


def _ort_run(model: onnx.ModelProto, feeds: dict):
    options = ort.SessionOptions()
    options.log_severity_level = 4  # expected failures are reported by the caller, not logged
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _qir_run(graph: Graph, feeds: dict) -> list:
    return Interpreter(graph).run(feeds)


def _close(a, b, rtol, atol) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_close(x, y, rtol, atol) for x, y in zip(a, b)))
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and all(x == y for x, y in zip(a.ravel(), b.ravel()))
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        return np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
    return np.array_equal(a, b)


def round_trip(name: str, model: onnx.ModelProto, inputs: list, rtol: float, atol: float) -> str | None:
    """None when the case is checked and fine, 'skip: ...' when out of scope, else the failure."""
    feeds = _feeds(model, inputs)
    if feeds is None:
        return "skip: non-tensor inputs"
    try:
        graph = load_onnx(model)
    except QirError:
        return "skip: qir does not import it"
    try:
        qir_orig = _qir_run(graph, feeds)
    except QirError:
        return "skip: qir does not run it"
    try:
        exported = export_onnx(graph)
    except QirError as exc:
        return f"export failed: {exc}"
    try:
        onnx.checker.check_model(exported, full_check=True)
    except Exception as exc:
        return f"onnx.checker rejects the export: {exc}"
    for what, ours, theirs in (("inputs", exported.graph.input, model.graph.input),
                               ("outputs", exported.graph.output, model.graph.output)):
        inits = {t.name for t in model.graph.initializer}
        want = [v.name for v in theirs if v.name not in inits]
        if [v.name for v in ours] != want:
            return f"graph {what} are {[v.name for v in ours]}, not the model's {want}"
    # qir's reference on the re-imported export must compute what it computed before.
    try:
        qir_exp = _qir_run(load_onnx(exported), feeds)
    except QirError as exc:
        return f"qir cannot re-import or run the export: {exc}"
    for i, (a, b) in enumerate(zip(qir_exp, qir_orig)):
        if not _close(a, b, 1e-5, 1e-6):
            return f"output {i}: qir's result on the export differs from qir's on the original"
    try:
        ort_orig = _ort_run(model, feeds)
    except Exception:
        return None  # onnxruntime cannot run the original either: nothing to compare with
    try:
        ort_exp = _ort_run(exported, feeds)
    except Exception as exc:
        if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
            return None  # onnxruntime lacks the newest version's kernel: not an export problem
        return f"onnxruntime cannot run the export: {exc}"
    for i, (a, b, c) in enumerate(zip(ort_exp, ort_orig, qir_orig)):
        # The export may be at a newer opset whose semantics differ at the edges (Attention's
        # masked scores: nan vs -inf); then onnxruntime must at least agree with qir.
        tol = max(rtol, 1e-5), max(atol, 1e-6)
        if not (_close(a, b, *tol) or _close(a, c, *tol)):
            return f"output {i}: onnxruntime's result on the export differs from the original's"
    return None


@pytest.mark.parametrize("shard", range(ROUND_TRIP_SHARDS))
def test_node_models_round_trip(shard):
    # A spread sample: ordered by a hash of the name, not alphabetically.
    cases = sorted((c for c in node_cases() if _shard(c[0]) == shard and c[0] not in KNOWN_QIR_BUGS),
                   key=lambda c: zlib.crc32(c[0][::-1].encode()))
    checked, failures = 0, {}
    for case in cases:
        if checked >= MAX_CASES_PER_SHARD:
            break
        result = round_trip(*case)
        if result is None:
            checked += 1
        elif not result.startswith("skip:"):
            checked += 1
            failures[case[0]] = result
    if checked == 0:
        pytest.skip("qir imports none of this shard's node models yet")
    assert not failures, f"{len(failures)} of {checked} round trips failed:\n" + "\n".join(
        f"  {name}: {msg.splitlines()[0][:300]}" for name, msg in sorted(failures.items()))


def test_digits_model_round_trip():
    if not DIGITS.is_file():
        pytest.skip("examples/digits/digits.onnx is not there yet")
    model = onnx.load(str(DIGITS))
    try:
        graph = load_onnx(model)
    except UnsupportedOpError as exc:
        pytest.skip(f"qir does not import the digits model yet: {exc.message.splitlines()[0]}")
    exported = export_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    x = graph.inputs[0]
    shape = [1 if isinstance(d, str) else d for d in x.type.shape]
    feeds = {x.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    ort_orig, ort_exp = _ort_run(model, feeds), _ort_run(exported, feeds)
    qir_exp = _qir_run(load_onnx(exported), feeds)
    for a, b, c in zip(ort_orig, ort_exp, qir_exp):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5)


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(LIGHT.glob("light_*.onnx")), ids=lambda p: p.stem)
def test_light_model_round_trip(path):
    """The nine real CNNs: import → export → checker → onnxruntime gives the original's outputs."""
    model = onnx.load(str(path))
    try:
        graph = load_onnx(model)
    except UnsupportedOpError as exc:
        pytest.skip(f"qir does not import {path.name} yet: {exc.message.splitlines()[0]}")
    exported = export_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    inits = {t.name for t in model.graph.initializer}
    x = next(i for i in model.graph.input if i.name not in inits)  # (IR 3: weights are inputs too)
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    feeds = {x.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    for a, b in zip(_ort_run(exported, feeds), _ort_run(model, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_import_then_export_keeps_the_model_output_names():
    """Unnamed ONNX nodes are named after their outputs; the values keep the names."""
    for node_name in ("", "Y", "relu"):
        graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"], name=node_name)], "g",
                                  [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [2])])
        g = load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
        assert [v.name for v in g.outputs] == ["Y"] and len(g.nodes) == 1
        assert [o.name for o in export_onnx(g).graph.output] == ["Y"]
