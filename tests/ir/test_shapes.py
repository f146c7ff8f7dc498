"""bind_input_dims: fixing symbolic input dims and re-inferring the graph's types."""

import numpy as np
import pytest

from qir.errors import OptionError
from qir.ir.graph import Graph
from qir.ir.shapes import bind_input_dims
from qir.ir.types import DType, TensorType

F32 = DType.FLOAT32


def two_input_graph():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("N", 3)))
    y = g.add_input("y", TensorType(F32, ("N", 3)))
    w = g.add_constant(np.ones((3, 4), np.float32), "w")
    s = g.add_node("elementwise.add", [x, y], name="add")
    m = g.add_node("linalg.matmul", [s.output, w], name="mm")
    g.outputs.append(m.output)
    return g


def test_binding_propagates_to_outputs_and_other_inputs():
    g = two_input_graph()
    assert g.outputs[0].type.shape == ("N", 4)
    bind_input_dims(g, {"x": (5, 3)})
    assert g.inputs[0].type.shape == (5, 3)
    assert g.inputs[1].type.shape == (5, 3)  # N is fixed in every input that uses it
    assert g.outputs[0].type == TensorType(F32, (5, 4))


@pytest.mark.parametrize("dims, message", [
    ({"nope": (1, 3)}, "names no input"),
    ({"x": (1, 3, 1)}, "rank 2"),
    ({"x": (1, 4)}, "fixed at 3"),
    ({"x": (1, 3), "y": (2, 3)}, "already set"),
])
def test_bad_dims_are_option_errors(dims, message):
    with pytest.raises(OptionError, match=message):
        bind_input_dims(two_input_graph(), dims)


def test_first_mismatch_binds_symbols_and_names_the_axis():
    from qir.ir.shapes import first_mismatch

    symbols = {}
    assert first_mismatch(("N", 3, "?"), (2, 3, 7), symbols) is None and symbols == {"N": 2}
    assert first_mismatch(("N", 4), (2, 5), symbols) == (1, 4, None)
    assert first_mismatch(("N",), (5,), symbols) == (0, "N", 2)
