"""Profiling a CompiledModel: latency percentiles, throughput, peak memory and per-layer times.

``profile(model, feeds)`` times ``runs`` inferences after ``warmup`` ones and returns a Profile
that prints as a rich table, serializes to JSON and writes a chrome trace (``chrome://tracing``
or https://ui.perfetto.dev: ``traceEvents`` with ``ph: "X"``, ``ts``/``dur`` in µs).

Per-layer times come from, in order of preference:

1. the executable's own ``run_profiled(inputs, record) -> outputs`` (an optional protocol any
   target may implement; ``inputs`` as for ``Executable.run``): it calls
   ``record(name, op, start_ns, end_ns)`` once per kernel it runs, with ``time.perf_counter_ns``
   times; ``name`` is the graph node it runs (a fused kernel gives the node that absorbed the
   others), from which the profile looks up the node's provenance (source-model node names);
2. a fallback registered for the model's target in ``LAYER_PROFILERS`` (the reference target:
   an Interpreter over the model's graph whose hook timestamps each node's outputs, so a node's
   time is from the previous node's outputs to its own, hook overhead included);
3. none: the profile has whole-model numbers only and says why.

Layer timings run separately from the latency runs, so their overhead never skews latency.
Peak memory is measured with ``tracemalloc`` over one more run: the peak of Python and numpy
heap allocations during that run (numpy reports its buffers to tracemalloc); memory a target
allocates natively (an arena, JIT code) is not seen there, so the process' peak RSS
(``getrusage`` max RSS, since the process started) is given too.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import attrs
import numpy as np

from qir.ir.serialize import write_atomic
from qir.errors import QirError
from qir.ir.graph import Graph, Value
from qir.ir.interpreter import Interpreter
from qir.ir.types import TensorType
from qir.runtime.model import CompiledModel, check_feeds

#: ``record(name, op, start_ns, end_ns)``: one kernel's time span.
Record = Callable[[str, str, int, int], None]
#: Runs the checked inputs once, calling ``record`` per kernel; returns the outputs.
LayerRunner = Callable[[list[Any], Record], list[Any]]

MEMORY_METHOD = ("tracemalloc: peak Python/numpy heap bytes allocated during one run "
                 "(native allocations of a target are not included)")


@runtime_checkable
class ProfiledExecutable(Protocol):
    """What an Executable implements to report per-kernel times (see the module docstring)."""

    def run_profiled(self, inputs: list[Any], record: Record) -> list[Any]:
        ...


# -- latency ---------------------------------------------------------------------------------

@attrs.frozen
class LatencyStats:
    """Latency percentiles (milliseconds) of a list of timed runs."""

    samples_ms: tuple[float, ...] = attrs.field(converter=tuple)

    @classmethod
    def of_seconds(cls, samples: Sequence[float]) -> "LatencyStats":
        if not samples:
            raise QirError("no timed runs to summarize", hint="use runs >= 1")
        return cls(tuple(s * 1e3 for s in samples))

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def min(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def throughput(self) -> float:
        """Inferences per second, one after another (1 / mean latency)."""
        return 1e3 / self.mean if self.mean > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {"p50_ms": self.p50, "p95_ms": self.p95, "p99_ms": self.p99, "mean_ms": self.mean,
                "min_ms": self.min, "throughput_per_s": self.throughput, "runs": len(self.samples_ms)}


def interleaved_latencies(fns: Sequence[Callable[[], Any]], *, warmup: int = 3,
                          runs: int = 50) -> list[list[float]]:
    """Seconds per call of each of ``fns``, alternating single calls so that machine noise hits
    them all alike (the order flips every round so that none always runs first)."""
    if runs < 1 or warmup < 0:
        raise QirError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(runs):
        for k in order:
            start = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - start)
        order.reverse()
    return samples


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes traced by tracemalloc during one call of ``fn`` (see MEMORY_METHOD)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        if started:
            tracemalloc.stop()


def process_peak_rss() -> int | None:
    """The process' peak resident set size in bytes, since it started (None where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS says bytes, Linux KiB


# -- per-layer times -------------------------------------------------------------------------

class _HookClock:
    """An interpreter hook timing each top-level node: from the previous node's outputs (or the
    graph's inputs/constants) to its own first output. Subgraph values fall inside their
    If/Loop node's span."""

    def __init__(self, graph: Graph):
        self.nodes = {id(n) for n in graph.nodes}
        self.starts = {id(v) for v in graph.inputs} | {id(v) for v in graph.constants.values()}
        self.mark = 0
        self.record: Record | None = None

    def __call__(self, value: Value, _array: Any) -> None:
        now = time.perf_counter_ns()
        node = value.producer
        if node is not None and id(node) in self.nodes:
            if value is node.outputs[0] and self.record is not None:
                self.record(node.name, node.op, self.mark, now)
            self.mark = now
        elif id(value) in self.starts:
            self.mark = now


def interpreter_layers(model: CompiledModel) -> LayerRunner:
    """Per-node times from an Interpreter over the model's graph (what the reference target
    runs), through the interpreter's hook."""
    clock = _HookClock(model.graph)
    interpreter = Interpreter(model.graph, clock)

    def run(inputs: list[Any], record: Record) -> list[Any]:
        clock.record, clock.mark = record, time.perf_counter_ns()
        try:
            return interpreter.run_graph(model.graph, list(inputs), {})
        finally:
            clock.record = None

    return run


#: Target name → a per-layer runner for executables without ``run_profiled``.
LAYER_PROFILERS: dict[str, Callable[[CompiledModel], LayerRunner]] = {"reference": interpreter_layers}


def layer_runner(model: CompiledModel) -> tuple[LayerRunner | None, str]:
    """How per-layer times are taken for ``model``, and a word on the source (or why not)."""
    executable = model.executable
    if isinstance(executable, ProfiledExecutable):
        return executable.run_profiled, f"{model.target} executable's run_profiled"
    fallback = LAYER_PROFILERS.get(model.target)
    if fallback is not None:
        return fallback(model), "interpreter hook"
    return None, (f"target {model.target!r} reports no per-layer times (its executable has no "
                  "run_profiled)")


@attrs.frozen
class LayerTime:
    """One graph node's time, averaged over the profiled runs."""

    name: str
    op: str
    provenance: tuple[str, ...]
    mean_ms: float
    calls: int
    percent: float  # of the sum over all layers

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "provenance": list(self.provenance),
                "mean_ms": self.mean_ms, "calls": self.calls, "percent": self.percent}


@attrs.frozen
class _Span:
    run: int
    name: str
    op: str
    start_ns: int
    end_ns: int
    whole_run: bool = False  # the span of a whole run, not of one kernel


def profile_layers(model: CompiledModel, feeds: dict[str, Any], runs: int,
                   runner: LayerRunner) -> list[_Span]:
    """Run ``runs`` times through ``runner``; every kernel's span, and one "run" span per run."""
    args = check_feeds(model.inputs, feeds)
    spans: list[_Span] = []
    for r in range(runs):
        def record(name: str, op: str, start_ns: int, end_ns: int, r: int = r) -> None:
            spans.append(_Span(r, name, op, start_ns, end_ns))

        start = time.perf_counter_ns()
        runner(args, record)
        spans.append(_Span(r, f"run {r}", "", start, time.perf_counter_ns(), whole_run=True))
    return spans


def summarize_layers(graph: Graph, spans: Sequence[_Span], runs: int) -> tuple[LayerTime, ...]:
    """Mean time per node (in first-run order, slowest first), with provenance and its share."""
    totals: dict[str, list[Any]] = {}
    for span in spans:
        if span.whole_run:
            continue
        entry = totals.setdefault(span.name, [span.op, 0, 0])
        entry[1] += span.end_ns - span.start_ns
        entry[2] += 1
    grand = sum(t for _, t, _ in totals.values()) or 1
    layers = []
    for name, (op, total_ns, calls) in totals.items():
        node = graph.find_node(name)
        provenance = node.provenance if node is not None and node.provenance else (name,)
        layers.append(LayerTime(name, op, tuple(provenance), total_ns / 1e6 / max(runs, 1), calls,
                                100.0 * total_ns / grand))
    return tuple(sorted(layers, key=lambda l: -l.mean_ms))


# -- the profile -----------------------------------------------------------------------------

@attrs.frozen
class Profile:
    """Whole-model and per-layer numbers of one model on one target (see ``profile``)."""

    target: str
    num_threads: int
    warmup: int
    latency: LatencyStats
    peak_memory_bytes: int | None
    peak_rss_bytes: int | None
    layers: tuple[LayerTime, ...]
    layer_source: str
    spans: tuple[_Span, ...] = attrs.field(repr=False, converter=tuple)
    memory_method: str = MEMORY_METHOD

    @property
    def throughput(self) -> float:
        return self.latency.throughput

    def layer_total_ms(self) -> float:
        """Sum of the layers' mean times: what the kernels took of one run."""
        return sum(l.mean_ms for l in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "num_threads": self.num_threads, "warmup": self.warmup,
                "latency": self.latency.to_dict(), "throughput_per_s": self.throughput,
                "peak_memory_bytes": self.peak_memory_bytes, "memory_method": self.memory_method,
                "peak_rss_bytes": self.peak_rss_bytes, "layer_source": self.layer_source,
                "layer_total_ms": self.layer_total_ms(),
                "layers": [l.to_dict() for l in self.layers]}

    def save_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON (atomically)."""
        write_atomic(Path(path), _json_bytes(self.to_dict()))

    def trace_events(self, pid: int = 0, label: str | None = None) -> list[dict[str, Any]]:
        """Chrome trace events: one "run" event per profiled run and one per node per run
        (``cat`` "layer"), times in µs from the first run's start."""
        return trace_events(self.spans, pid=pid, label=label or f"qir {self.target} "
                            f"({self.num_threads} thread{'s' if self.num_threads != 1 else ''})",
                            graph_provenance={l.name: l.provenance for l in self.layers})

    def save_chrome_trace(self, path: str | os.PathLike) -> None:
        """Write a chrome://tracing / Perfetto JSON file (atomically)."""
        write_chrome_trace(path, self.trace_events())

    def table(self, top: int = 10):
        """A rich Table of the ``top`` slowest layers with their provenance and share."""
        from rich.table import Table

        table = Table(title=f"slowest layers, {self.num_threads} thread(s) ({self.layer_source}; "
                            f"mean of {_runs_of(self.spans)} runs)")
        for column, justify in (("layer", "left"), ("op", "left"), ("source nodes", "left"),
                                ("ms", "right"), ("%", "right")):
            table.add_column(column, justify=justify, overflow="fold")
        for layer in self.layers[:top]:
            table.add_row(layer.name, layer.op, _shorten(", ".join(layer.provenance)),
                          f"{layer.mean_ms:.3f}", f"{layer.percent:.1f}")
        return table

    def summary_table(self):
        """A rich Table of the whole-model numbers."""
        from rich.table import Table

        table = Table(title=f"qir {self.target}, {self.num_threads} thread(s), "
                            f"{len(self.latency.samples_ms)} runs")
        for column in ("p50 ms", "p95 ms", "p99 ms", "mean ms", "inferences/s", "peak mem"):
            table.add_column(column, justify="right")
        lat = self.latency
        table.add_row(f"{lat.p50:.3f}", f"{lat.p95:.3f}", f"{lat.p99:.3f}", f"{lat.mean:.3f}",
                      f"{self.throughput:.1f}", format_bytes(self.peak_memory_bytes))
        return table


def profile(model: CompiledModel, feeds: dict[str, Any], *, warmup: int = 3, runs: int = 50,
            layers: bool = True, layer_runs: int | None = None, memory: bool = True,
            latency_samples: Sequence[float] | None = None) -> Profile:
    """Profile ``model`` on ``feeds``: ``runs`` timed runs after ``warmup`` untimed ones, then
    (``layers``) ``layer_runs`` (default ``runs``) runs with per-layer timing and (``memory``)
    one run under tracemalloc. ``latency_samples`` (seconds) replaces the timed runs when the
    caller measured them itself (e.g. interleaved with another runtime)."""
    check_feeds(model.inputs, feeds)  # a bad feed fails here, before any timing

    def run_once() -> Any:
        return model.run(feeds)

    if latency_samples is None:
        (latency_samples,) = interleaved_latencies([run_once], warmup=warmup, runs=runs)
    latency = LatencyStats.of_seconds(latency_samples)
    spans: list[_Span] = []
    layer_times: tuple[LayerTime, ...] = ()
    source = "not requested"
    if layers:
        runner, source = layer_runner(model)
        if runner is not None:
            n = runs if layer_runs is None else layer_runs
            spans = profile_layers(model, feeds, n, runner)
            layer_times = summarize_layers(model.graph, spans, n)
    return Profile(target=model.target, num_threads=model.options.num_threads, warmup=warmup,
                   latency=latency, peak_memory_bytes=peak_memory(run_once) if memory else None,
                   peak_rss_bytes=process_peak_rss(), layers=layer_times, layer_source=source,
                   spans=spans)


def random_feeds(model: CompiledModel, *, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Random inputs matching the model's input specs; every symbolic dim is ``batch``.

    Floats (and quantized inputs, which take float) are standard normal, integers in [0, 4),
    booleans fair coins: enough to time a model, not to check its answers.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for spec in model.inputs:
        t = spec.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise QirError(f"input {spec.name!r} ({t}) has no fixed-rank tensor type to make "
                           "random data for", hint="fix its dims with --input-dim NAME DIMS")
        shape = tuple(batch if isinstance(d, str) else d for d in t.shape)
        dtype = np.dtype(np.float32) if t.quant is not None else t.dtype.numpy
        if dtype.kind in "fc" or t.dtype.is_float:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 4, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise QirError(f"input {spec.name!r}: no random data for dtype {t.dtype.value}",
                           hint="profile it with your own inputs (qir.runtime.profiler.profile)")
    return feeds


# -- chrome traces and files -----------------------------------------------------------------

def trace_events(spans: Sequence[_Span], *, pid: int = 0, label: str = "qir",
                 graph_provenance: dict[str, tuple[str, ...]] | None = None) -> list[dict[str, Any]]:
    """Spans as chrome trace events (``ph`` "X", µs), under a process named ``label``."""
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                                     "args": {"name": label}}]
    if not spans:
        return events
    origin = min(s.start_ns for s in spans)
    provenance = graph_provenance or {}
    for span in spans:
        event = {"ph": "X", "pid": pid, "tid": 0, "ts": (span.start_ns - origin) / 1e3,
                 "dur": (span.end_ns - span.start_ns) / 1e3}
        if span.whole_run:
            event.update(name=span.name, cat="run", args={"run": span.run})
        else:
            event.update(name=span.name, cat="layer",
                         args={"op": span.op, "run": span.run,
                               "provenance": list(provenance.get(span.name, (span.name,)))})
        events.append(event)
    return events


def write_chrome_trace(path: str | os.PathLike, events: list[dict[str, Any]]) -> None:
    """Write trace events as a chrome://tracing / Perfetto JSON file (atomically)."""
    write_atomic(Path(path), _json_bytes({"traceEvents": events, "displayTimeUnit": "ms"}))


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _runs_of(spans: Sequence[_Span]) -> int:
    return sum(1 for s in spans if s.whole_run)


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for factor, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"
