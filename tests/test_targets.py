"""The target registry: built-ins, plugins, duplicate names."""

import pytest

from qir.errors import QirError
from qir.targets import Support, Target, available_targets, get_target, register_target


def test_reference_is_registered_and_supports_known_ops():
    assert "reference" in available_targets()
    from qir.ir.graph import Graph
    from qir.ir.types import DType, TensorType

    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (2,)))
    node = g.add_node("nn.relu", [x])
    assert get_target("reference").supports(node) == Support(True)


def test_duplicate_target_names_are_an_error_naming_both():
    class A(Target):
        name = "dup-test"
        supports = compile = load = lambda *a: None

    class B(A):
        pass

    register_target(A)
    with pytest.raises(QirError, match="A.*B"):
        register_target(B)
