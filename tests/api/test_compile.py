"""The public API end to end on the reference target."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qir
from qir.errors import InputError, OptionError, TargetError


def symbolic_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [1.0, -2.0, 3.0])
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu"),
             helper.make_node("Neg", ["s"], ["z"], name="neg")]
    graph = helper.make_graph(nodes, "sym", [x], [y, z], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_version():
    assert isinstance(qir.__version__, str) and qir.__version__.count(".") == 2


@pytest.mark.parametrize("kind", ["proto", "bytes", "path", "graph"])
def test_compile_any_model_kind_and_run(kind, tmp_path):
    proto = symbolic_model()
    model = {"proto": proto, "bytes": proto.SerializeToString(), "graph": qir.load_onnx(proto)}.get(kind)
    if kind == "path":
        model = tmp_path / "m.onnx"
        onnx.save(proto, model)
    m = qir.compile(model, target="reference", num_threads=2)
    assert [s.name for s in m.inputs] == ["x"] and [s.name for s in m.outputs] == ["y", "z"]
    assert m.inputs[0].shape == ("N", 3)
    for n in (1, 5):  # symbolic N binds from each feed
        x = np.arange(3 * n, dtype=np.float32).reshape(n, 3) - 4
        out = m.run({"x": x})
        assert list(out) == ["y", "z"]
        np.testing.assert_allclose(out["y"], np.maximum(x + [1, -2, 3], 0))
        np.testing.assert_allclose(out["z"], -(x + [1, -2, 3]))


def test_outputs_belong_to_the_caller():
    m = qir.compile(symbolic_model())
    x = np.ones((2, 3), np.float32)
    first = m.run({"x": x})
    first["y"][:] = 100
    assert m.run({"x": x})["y"].max() < 100
    assert first["y"].flags.writeable


def test_bad_feeds_are_clear_errors():
    m = qir.compile(symbolic_model())
    with pytest.raises(InputError, match="missing"):
        m.run({})
    with pytest.raises(InputError, match="float32"):
        m.run({"x": np.ones((2, 3), np.float64)})
    with pytest.raises(InputError, match="dim 1 must be 3"):
        m.run({"x": np.ones((2, 4), np.float32)})
    with pytest.raises(InputError, match="rank"):
        m.run({"x": np.ones((3,), np.float32)})


def test_bad_options_are_clear_errors():
    with pytest.raises(OptionError, match="num_threads"):
        qir.compile(symbolic_model(), num_threads=0)
    with pytest.raises(OptionError, match="bogus"):
        qir.compile(symbolic_model(), bogus=1)
    with pytest.raises(TargetError, match="reference"):
        qir.compile(symbolic_model(), target="nope")


def test_interpreter_hook_sees_every_value():
    from qir.ir.interpreter import Interpreter

    g = qir.load_onnx(symbolic_model())
    seen = {}
    Interpreter(g, hook=lambda v, a: seen.__setitem__(v.name, a)).run({"x": np.zeros((1, 3), np.float32)})
    assert {"x", "b", "s", "y", "z"} <= set(seen)
    np.testing.assert_allclose(seen["s"], [[1, -2, 3]])


@pytest.mark.parametrize("opt_level", [0, 1, 2, 3])
def test_every_opt_level_gives_the_same_outputs(opt_level):
    x = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)
    want = qir.compile(symbolic_model(), opt_level=0).run({"x": x})
    got = qir.compile(symbolic_model(), opt_level=opt_level).run({"x": x})
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_compile_leaves_the_callers_graph_alone():
    from qir.ir.printer import print_graph

    g = qir.load_onnx(symbolic_model())
    before = print_graph(g, weights={})
    qir.compile(g, opt_level=3, passes="canonicalize,dce")
    assert print_graph(g, weights={}) == before


def test_bad_opt_level_and_pipeline_are_clear_errors():
    with pytest.raises(OptionError, match="opt_level"):
        qir.compile(symbolic_model(), opt_level=7)
    with pytest.raises(OptionError, match="no-such-pass"):
        qir.compile(symbolic_model(), passes="no-such-pass")
