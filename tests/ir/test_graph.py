"""Graph mutation keeps use-def lists right; the verifier names the node at fault."""

import numpy as np
import pytest

from qir.errors import VerificationError
from qir.ir.graph import Graph, Use
from qir.ir.types import DType, TensorType
from qir.ir.verifier import verify

F32 = DType.FLOAT32


def small_graph():
    g = Graph("g")
    x = g.add_input("x", TensorType(F32, ("N", 4)))
    w = g.add_constant(np.ones((4,), np.float32), "w")
    add = g.add_node("elementwise.add", [x, w], name="add")
    relu = g.add_node("nn.relu", [add.output], name="relu")
    g.outputs.append(relu.output)
    return g, x, w, add, relu


def test_build_keeps_uses_and_infers_types():
    g, x, w, add, relu = small_graph()
    assert x.uses == (Use(add, 0),) and w.uses == (Use(add, 1),)
    assert add.output.users == [relu]
    assert relu.output.type == TensorType(F32, ("N", 4))
    assert add.provenance == ("add",)
    verify(g)


def test_replace_all_uses_and_erase():
    g, x, w, add, relu = small_graph()
    g.replace_all_uses(add.output, x)
    assert relu.inputs[0] is x and add.output.uses == ()
    assert Use(relu, 0) in x.uses
    g.erase_node(add)
    assert w.uses == () and add not in g.nodes
    verify(g)


def test_erase_used_node_is_refused():
    g, _, _, add, _ = small_graph()
    with pytest.raises(VerificationError, match="add"):
        g.erase_node(add)


def test_set_input_moves_the_use():
    g, x, w, add, relu = small_graph()
    add.set_input(1, x)
    assert w.uses == () and x.uses == (Use(add, 0), Use(add, 1))
    verify(g)


def test_names_are_unique_across_subgraphs():
    g = Graph("outer")
    sub = Graph("body", parent=g)
    a = g.add_input("v", TensorType(F32, (1,)))
    b = sub.add_input("v", TensorType(F32, (1,)))
    assert a.name != b.name


def test_verifier_names_a_node_used_before_definition():
    g, x, w, add, relu = small_graph()
    g.nodes.reverse()
    with pytest.raises(VerificationError, match="relu"):
        verify(g)
    g.topological_sort()
    verify(g)


def test_verifier_finds_a_cycle():
    g, x, w, add, relu = small_graph()
    add.set_input(0, relu.output)
    with pytest.raises(VerificationError, match="cycle"):
        g.topological_sort()


def test_verifier_checks_types():
    g, x, w, add, relu = small_graph()
    relu.output.type = TensorType(DType.INT32, ("N", 4))
    with pytest.raises(VerificationError, match="relu"):
        verify(g)


def test_verifier_checks_attributes():
    g, x, w, add, relu = small_graph()
    relu.attrs["bogus"] = 1
    with pytest.raises(VerificationError, match="relu.*bogus"):
        verify(g)
