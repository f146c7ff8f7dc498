"""Checks every pass test uses: same outputs before/after, a pass run on a deep copy with
verify-each, and golden before/after textual IR.

    from tests.passes.helpers import PROPERTY_SETTINGS, check_pass_preserves, golden

    @PROPERTY_SETTINGS
    @given(graphs())
    def test_cse_keeps_outputs(case):
        check_pass_preserves("cse", case.graph, case.feeds)          # rtol=1e-4, atol=1e-5

    def test_cse_golden():
        golden(GOLDEN / "cse_dupes.qir", "cse")                        # vs cse_dupes.after.qir

Tolerances: outputs match when ``|after - before| <= atol + rtol * |before|`` elementwise
(NaNs must be NaN in both); the defaults (rtol 1e-4, atol 1e-5) cover float32 reassociation,
e.g. BatchNorm folded into conv weights. Exact passes (dce, cse, noop removal) may pass
``rtol=0, atol=0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from hypothesis import HealthCheck, settings

from qir.ir.graph import Graph
from qir.ir.parser import parse_graph
from qir.ir.printer import print_graph
from qir.ir.serialize import dumps, loads
from qir.ir.types import TensorType
from qir.ir.verifier import verify
from qir.passes import Pass, PassContext, PassManager, resolve_pipeline
from qir.ir.interpreter import Interpreter

#: Default float tolerance of the property tests (see the module docstring).
RTOL, ATOL = 1e-4, 1e-5

#: Examples per property test; QIR_HYPOTHESIS_EXAMPLES=500 for a thorough run.
MAX_EXAMPLES = int(os.environ.get("QIR_HYPOTHESIS_EXAMPLES", "60"))

#: Settings for pass property tests: keep each test file well under a minute on 2 cores.
PROPERTY_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                    HealthCheck.filter_too_much])

GOLDEN_DIR = Path(__file__).parent / "golden"


# -- copying and running ---------------------------------------------------------------------

def copy_graph(graph: Graph) -> Graph:
    """A deep copy through the binary form (text + weights), so nothing is shared."""
    return loads(dumps(graph))


def run_graph(graph: Graph, feeds: dict[str, Any]) -> list[Any]:
    """The graph's outputs on the reference interpreter."""
    return Interpreter(graph).run(feeds)


def random_feeds(graph: Graph, seed: int = 0, low: float = -2.0, high: float = 2.0) -> dict[str, np.ndarray]:
    """Uniform random feeds for a graph whose inputs are tensors of static shape."""
    rng = np.random.RandomState(seed)
    feeds = {}
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None or not all(isinstance(d, int) for d in t.shape):
            raise ValueError(f"random_feeds: input %{v.name} has no static tensor shape ({t}); pass feeds")
        dt = t.dtype.numpy
        if np.issubdtype(dt, np.floating):
            feeds[v.name] = rng.uniform(low, high, size=t.shape).astype(dt)
        elif dt == np.bool_:
            feeds[v.name] = rng.randint(0, 2, size=t.shape).astype(bool)
        else:
            feeds[v.name] = rng.randint(-5, 6, size=t.shape).astype(dt)
    return feeds


# -- comparing ---------------------------------------------------------------------------------

def assert_close(actual: Any, expected: Any, rtol: float = RTOL, atol: float = ATOL, what: str = "output") -> None:
    """One value (array, list of arrays or None) matches another: dtype, shape and numbers."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: {actual!r} vs {expected!r}"
        return
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{what}: sequence lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, rtol, atol, f"{what}[{i}]")
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} after, {expected.dtype} before"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} after, {expected.shape} before"
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


def assert_same_outputs(graph_before: Graph, graph_after: Graph, feeds: dict[str, Any],
                        rtol: float = RTOL, atol: float = ATOL) -> list[Any]:
    """Both graphs have the same output names and compute the same outputs on ``feeds``.

    Returns the outputs of ``graph_after``.
    """
    before_names = [v.name for v in graph_before.outputs]
    after_names = [v.name for v in graph_after.outputs]
    assert after_names == before_names, f"graph outputs renamed: {before_names} → {after_names}"
    expected = run_graph(graph_before, feeds)
    actual = run_graph(graph_after, feeds)
    for name, a, e in zip(after_names, actual, expected):
        assert_close(a, e, rtol, atol, f"output %{name}")
    return actual


def source_names(graph: Graph) -> set[str]:
    """Every name a node of ``graph`` (or of its subgraphs) may cite as provenance."""
    return {name for node in graph.walk() for name in node.provenance}


def assert_provenance(graph: Graph, sources: Iterable[str]) -> None:
    """Every node has provenance, and names only ``sources``."""
    sources = set(sources)
    for node in graph.walk():
        assert node.provenance, f"node {node.name} ({node.op}) has no provenance"
        unknown = set(node.provenance) - sources
        assert not unknown, f"node {node.name} ({node.op}) names unknown source nodes {sorted(unknown)}"


# -- running passes ------------------------------------------------------------------------------

def run_pipeline(pass_or_pipeline: Any, graph: Graph, ctx: PassContext | None = None, **ctx_kwargs) -> Graph:
    """Run a pass name, pipeline string, list or Pass instance with verify-each on (in place)."""
    spec = [pass_or_pipeline] if isinstance(pass_or_pipeline, Pass) else pass_or_pipeline
    ctx = ctx or PassContext(verify_each=True, **ctx_kwargs)
    return PassManager(resolve_pipeline(spec), ctx).run(graph)


def check_pass_preserves(pass_or_pipeline: Any, graph: Graph, feeds: dict[str, Any] | None = None,
                         rtol: float = RTOL, atol: float = ATOL, *, tol: float | None = None,
                         provenance: bool = True, ctx: PassContext | None = None) -> Graph:
    """Run the pass on a deep copy of ``graph`` (verify-each on), verify it and compare outputs
    with the untouched graph; with ``provenance`` also check every node's provenance is
    non-empty and names only nodes of the original (when the original's nodes all have some).

    ``tol`` sets rtol and atol at once. Returns the transformed copy.
    """
    if tol is not None:
        rtol = atol = tol
    feeds = random_feeds(graph) if feeds is None else feeds
    before = copy_graph(graph)
    after = copy_graph(graph)
    input_sig = [(v.name, str(v.type)) for v in before.inputs]
    out = run_pipeline(pass_or_pipeline, after, ctx)
    assert out is after or out is None, "qir.passes.run must transform the graph in place"
    verify(after)
    assert [(v.name, str(v.type)) for v in after.inputs] == input_sig, "graph inputs changed"
    assert_same_outputs(before, after, feeds, rtol, atol)
    if provenance and all(n.provenance for n in before.walk()):
        assert_provenance(after, source_names(before))
    return after


# -- golden files ----------------------------------------------------------------------------------

def _read_graph(path: Path) -> Graph:
    text = path.read_text()
    sidecar = path.with_name(path.name + ".weights.npz")
    weights = None
    if sidecar.exists():
        from qir.ir.serialize import read_weights

        weights = read_weights(sidecar)
    return parse_graph(text, weights, source=str(path))


def golden(before_text_path: str | os.PathLike, pipeline: Any, after_path: str | os.PathLike | None = None,
           *, feeds: dict[str, Any] | None = None, rtol: float = RTOL, atol: float = ATOL,
           check_outputs: bool = True) -> Graph:
    """Parse ``before_text_path`` (a ``.qir`` file), run ``pipeline`` with verify-each and compare
    the printed result with the golden ``<stem>.after.qir`` beside it (or ``after_path``).

    ``QIR_UPDATE_GOLDEN=1`` (re)writes the golden file instead. With ``check_outputs`` (and
    static input shapes or ``feeds``) the outputs are also compared before/after.
    Returns the transformed graph.
    """
    before_path = Path(before_text_path)
    if after_path is None:
        stem = before_path.name[:-4] if before_path.name.endswith(".qir") else before_path.name
        after_path = before_path.with_name(stem + ".after.qir")
    after_path = Path(after_path)
    original = _read_graph(before_path)
    verify(original)
    graph = copy_graph(original)
    run_pipeline(pipeline, graph)
    verify(graph)
    text = print_graph(graph)
    if check_outputs:
        try:
            feeds = random_feeds(original) if feeds is None else feeds
        except ValueError:
            feeds = None
        if feeds is not None:
            assert_same_outputs(original, graph, feeds, rtol, atol)
    if os.environ.get("QIR_UPDATE_GOLDEN") == "1":
        after_path.write_text(text)
        return graph
    if not after_path.exists():
        raise AssertionError(f"golden file {after_path} is missing; create it with QIR_UPDATE_GOLDEN=1")
    expected = after_path.read_text()
    assert text == expected, (f"IR after {pipeline!r} on {before_path.name} differs from {after_path.name} "
                              f"(QIR_UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- got\n{text}")
    return graph


__all__ = ["ATOL", "GOLDEN_DIR", "PROPERTY_SETTINGS", "RTOL", "assert_close", "assert_provenance",
           "assert_same_outputs", "check_pass_preserves", "copy_graph", "golden", "random_feeds",
           "run_graph", "run_pipeline", "source_names"]
