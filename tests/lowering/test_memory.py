"""The static memory planner (qir/lowering/memory.py) and the memory-report pass.

Property tests: on random valid graphs (tests/passes/strategies.py) every plan keeps
simultaneously live values apart in the arena, fits every value, and a run that keeps each value
only in its arena slot (qir.lowering.memory.run_with_plan) reproduces the reference
interpreter's outputs bit for bit.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from qir.errors import OptionError, QirError
from qir.ir.graph import Graph
from qir.ir.printer import print_graph
from qir.ir.types import DType, TensorType
from qir.lowering.memory import MemoryPlan, plan_memory, run_with_plan
from qir.ir.interpreter import Interpreter
from tests.passes.helpers import PROPERTY_SETTINGS, assert_close, run_pipeline
from tests.passes.strategies import Case, cnn_graphs, graphs

F32 = DType.FLOAT32
ROOT = Path(__file__).resolve().parents[2]


def check_plan(graph: Graph, plan: MemoryPlan, feeds: dict) -> None:
    plan.check()
    sizes = [b.size for b in plan.buffers.values()]
    assert plan.arena_size <= plan.naive_bytes
    assert plan.arena_size >= max(sizes, default=0)
    for b in plan.buffers.values():
        assert b.offset % plan.alignment == 0 and b.offset + b.size <= plan.arena_size
    want = Interpreter(graph).run(feeds)
    got = run_with_plan(graph, plan, feeds)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, rtol=0, atol=0, what=f"output {i}")


@PROPERTY_SETTINGS
@given(graphs(), st.sampled_from([1, 16, 64]), st.booleans())
def test_plans_are_sound(case, alignment, in_place):
    plan = plan_memory(case.graph, alignment=alignment, in_place=in_place)
    assert plan.complete, plan.unplannable
    check_plan(case.graph, plan, case.feeds)
    if not in_place:
        assert plan.arena_size >= plan.peak_live_bytes and not plan.in_place


def _strided_reduction_case() -> Case:
    """A hypothesis counterexample: the conv kernel returns a non-C-ordered array, so the
    interpreter fed global_average_pool a strided view while a planned run (contiguous arena
    slots) fed it a C-ordered copy, and numpy summed the 4x4 window in another order: the
    outputs differed in the last bit. The interpreter now keeps every value C-ordered
    (qir.ir.opdef.conform)."""
    rng = np.random.RandomState(0)
    g = Graph("main")
    x = g.add_input("x0", TensorType(F32, (2, 1, 4, 4)))
    conv = {"auto_pad": "NOTSET", "dilations": (1, 1), "group": 1, "kernel_shape": (1, 1),
            "pads": (0, 0, 0, 0), "strides": (1, 1)}
    w1 = g.add_constant(rng.uniform(-1, 1, (2, 1, 1, 1)).astype(np.float32), "c0")
    w2 = g.add_constant(rng.uniform(-1, 1, (1, 2, 1, 1)).astype(np.float32), "c1")
    y = g.add_node("nn.conv", [x, w1], conv, name="n0").output
    p = g.add_node("nn.global_average_pool", [g.add_node("nn.relu", [y], name="n1").output], name="n2").output
    out = g.add_node("nn.conv", [p, w2], conv, name="n3").output
    g.outputs = [out, y]
    return Case(g, {"x0": rng.uniform(-2, 2, (2, 1, 4, 4)).astype(np.float32)})


@PROPERTY_SETTINGS
@given(cnn_graphs())
@example(_strided_reduction_case())
def test_cnn_plans_are_sound(case):
    check_plan(case.graph, plan_memory(case.graph), case.feeds)


def _chain(n: int = 4, shape=(8, 8)) -> Graph:
    g = Graph("main")
    v = g.add_input("x", TensorType(F32, shape))
    for i in range(n):
        v = g.add_node("nn.relu" if i % 2 else "nn.sigmoid", [v], name=f"n{i}").output
    g.outputs = [v]
    return g


def test_in_place_chain_uses_one_buffer():
    g = _chain()
    plan = plan_memory(g, alignment=64)
    assert len(plan.in_place) == 3  # the first value comes from the caller's input
    assert len({b.offset for b in plan.buffers.values()}) == 1
    assert plan.arena_size == 8 * 8 * 4
    no = plan_memory(g, in_place=False)
    assert no.arena_size == 2 * 8 * 8 * 4 == no.peak_live_bytes  # ping-pong between two slots
    assert no.reused_buffers == 2
    check_plan(g, plan, {"x": np.random.RandomState(0).randn(8, 8).astype(np.float32)})


def test_no_in_place_over_a_value_still_needed():
    g = Graph("main")
    x = g.add_input("x", TensorType(F32, (4,)))
    a = g.add_node("nn.relu", [x], name="a").output
    b = g.add_node("nn.sigmoid", [a], name="b").output
    c = g.add_node("elementwise.add", [a, b], name="c").output  # a still live at b
    g.outputs = [c]
    plan = plan_memory(g)
    donors = {t[2]: t[1] for t in plan.in_place}
    assert b.name not in donors
    assert plan.buffers[a.name].offset != plan.buffers[b.name].offset
    assert donors[c.name] in (a.name, b.name)
    check_plan(g, plan, {"x": np.arange(4, dtype=np.float32) - 2})


def test_graph_outputs_stay_live_to_the_end():
    g = Graph("main")
    x = g.add_input("x", TensorType(F32, (16,)))
    a = g.add_node("nn.relu", [x], name="a").output
    b = g.add_node("nn.sigmoid", [x], name="b").output
    c = g.add_node("nn.tanh", [b], name="c").output
    g.outputs = [a, c]
    plan = plan_memory(g)
    assert plan.buffers[a.name].end == len(g.nodes)
    assert not any(t[1] == a.name for t in plan.in_place)
    check_plan(g, plan, {"x": np.linspace(-1, 1, 16, dtype=np.float32)})


def test_symbolic_dims_are_unplannable_until_bound():
    g = _chain(shape=("N", 8))
    plan = plan_memory(g)
    assert not plan.complete and "dims=" in next(iter(plan.unplannable.values()))
    assert "unplannable" in plan.summary()
    bound = plan_memory(g, {"N": 3})
    assert bound.complete and bound.arena_size == 3 * 8 * 4 + 32  # aligned up to 64 bytes
    check_plan(g, bound, {"x": np.ones((3, 8), np.float32)})


def test_bad_alignment():
    with pytest.raises(QirError, match="power of two"):
        plan_memory(_chain(), alignment=48)


def test_subgraph_capture_counts_as_a_use():
    """A value read only inside an If branch stays live until the If node."""
    g = Graph("main")
    x = g.add_input("x", TensorType(F32, (4,)))
    cond = g.add_input("c", TensorType(DType.BOOL, ()))
    captured = g.add_node("nn.relu", [x], name="captured").output
    filler = g.add_node("nn.sigmoid", [x], name="filler").output
    filler2 = g.add_node("nn.tanh", [filler], name="filler2").output
    branches = []
    for label in ("then", "else"):
        sub = Graph(label, parent=g)
        op = "elementwise.neg" if label == "then" else "elementwise.abs"
        sub.outputs = [sub.add_node(op, [captured], name=f"{label}_op").output]
        branches.append(sub)
    node = g.add_node("control.if", [cond], {"then_branch": branches[0], "else_branch": branches[1]},
                      name="if", output_types=[TensorType(F32, (4,))])
    out = g.add_node("elementwise.add", [node.output, filler2], name="out").output
    g.outputs = [out]
    plan = plan_memory(g)
    assert plan.buffers[captured.name].end == g.nodes.index(node)
    for flag in (True, False):
        check_plan(g, plan, {"x": np.array([-1, 0.5, 2, -3], np.float32), "c": np.array(flag)})


# -- the memory-report pass ------------------------------------------------------------------

def test_memory_report_changes_nothing(capsys):
    from qir.passes import make_pass

    g = _chain(shape=("N", 8))
    before = print_graph(g)
    report = make_pass("memory-report", {"label": "before", "dims": "N:2"})
    run_pipeline(report, g)
    assert print_graph(g) == before
    assert report.plans[0].complete and report.plans[0].arena_size == 2 * 8 * 4
    err = capsys.readouterr().err
    assert "memory-report [before]" in err and "arena" in err and "naive" in err


def test_memory_report_bad_dims():
    with pytest.raises(OptionError, match="dims"):
        run_pipeline("memory-report{dims=N}", _chain())


# -- real models ------------------------------------------------------------------------------

def _models():
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    from test_light_models import MODELS, official_inputs  # noqa: E402

    return MODELS, official_inputs


@pytest.mark.slow
def test_light_models_and_digits_plans():
    """Plan each light model and digits: sound, fast, and (for the small ones) a planned run
    reproduces the interpreter. Prints naive / peak / arena bytes per model."""
    import onnx

    import qir

    models, official_inputs = _models()
    cases = [(m["name"], str(m["path"])) for m in models] + [("digits", str(ROOT / "examples/digits/digits.onnx"))]
    for name, path in cases:
        g = qir.load_onnx(path)
        t0 = time.perf_counter()
        plan = plan_memory(g, {"N": 1})
        elapsed = time.perf_counter() - t0
        plan.check()
        assert plan.complete, name
        print(f"{name}: {len(plan.buffers)} values, naive {plan.naive_bytes / 2**20:.1f} MiB, "
              f"peak live {plan.peak_live_bytes / 2**20:.1f} MiB, arena {plan.arena_size / 2**20:.1f} MiB, "
              f"{len(plan.in_place)} in place, planned in {elapsed * 1000:.0f} ms")
        if name in ("squeezenet", "digits", "shufflenet"):
            if name == "digits":
                feeds = {"input": np.random.RandomState(0).rand(1, 1, 8, 8).astype(np.float32)}
            else:
                feeds = official_inputs(onnx.load(path))
            want = Interpreter(g).run(feeds)
            got = run_with_plan(g, plan, feeds)
            for a, b in zip(got, want):
                assert np.array_equal(a, b)
