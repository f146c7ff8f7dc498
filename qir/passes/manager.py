"""PassManager and PassContext: run pipelines of passes with instruments.

A pipeline is a string (``"canonicalize,fold-constants,fuse-epilogue{max-ops=3},dce"``) or a
list of names, ``(name, options)`` pairs or Pass instances. ``PassContext`` carries the opt
level, disabled passes, per-pass options and instruments::

    timing = TimePasses()
    ctx = PassContext(opt_level=3, verify_each=True, dump_dir="dumps", instruments=[timing])
    PassManager(resolve_pipeline("canonicalize,dce"), ctx).run(graph)
    timing.print()

Instruments (``Instrument`` subclasses) see every pass run: ``before_pass``, ``after_pass``,
``on_failure`` (and ``before_pipeline`` / ``after_pipeline``). Before-hooks run in reverse list
order and after-hooks in list order, so the first instrument wraps the others like the outermost
context manager (the timer, listed first, measures the pass alone).

A pass that raises, or that leaves an invalid graph under verify-each, becomes a ``PassError``
naming it, with a reproducer: the IR before the pass (``reproducer-<pass>.qirb`` in the dump
directory, else in a fresh temporary directory) and the ``qirc opt`` command that reruns it.

Passes declare what they need (``needs = ("shapes",)``); the manager runs the pass providing it
first, once per run, unless an earlier pass of the run provided it. Providers are registered
with ``register_provider`` or declared on a pass as ``provides = ("shapes",)``.
"""

from __future__ import annotations

import io
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

import attrs

from qir.errors import OptionError, PassError, QirError, VerificationError
from qir.ir.graph import Graph
from qir.passes.registry import Pass, all_passes, make_pass

PipelineSpec = "str | Sequence[str | tuple[str, dict] | Pass]"

_ITEM = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


# -- pipeline strings ------------------------------------------------------------------------

def parse_pipeline(text: str) -> list[tuple[str, dict[str, str]]]:
    """``"a,b{k=v,k2=v2},c"`` → ``[("a", {}), ("b", {"k": "v", "k2": "v2"}), ("c", {})]``."""
    items, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if m is None or m.end() == pos:
            raise OptionError(f"bad pipeline {text!r} at character {pos}: expected "
                              f"'name' or 'name{{option=value,...}}' separated by commas")
        options = {}
        for part in filter(None, (p.strip() for p in (m.group(2) or "").split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                # A list value continues after a comma: "axes=1,2" → axes="1,2"
                if not options:
                    raise OptionError(f"bad option {part!r} for pass {m.group(1)!r}: expected key=value")
                last = next(reversed(options))
                options[last] += "," + part
                continue
            options[key.strip()] = value.strip()
        items.append((m.group(1), options))
        pos = m.end()
    return items


def resolve_pipeline(spec: Any, options: dict[str, dict[str, Any]] | None = None) -> list[Pass]:
    """Pass instances for a pipeline string or list.

    ``options`` (pass name → options) are defaults for the passes named in ``spec``; options
    written in the spec itself win. Pass instances are taken as they are.
    """
    if isinstance(spec, str):
        spec = parse_pipeline(spec)
    options = options or {}
    passes = []
    for item in spec:
        if isinstance(item, Pass):
            passes.append(item)
        elif isinstance(item, str):
            if "," in item or "{" in item:
                passes.extend(resolve_pipeline(item, options))
            else:
                passes.append(make_pass(item, options.get(item)))
        else:
            name, opts = item
            passes.append(make_pass(name, {**options.get(name, {}), **(opts or {})}))
    return passes


def format_pass(p: Pass) -> str:
    """The pipeline-string form of a pass instance: ``name{opt=value,...}`` for its options that
    differ from their defaults (so that ``resolve_pipeline(format_pass(p))`` rebuilds it)."""
    if not attrs.has(type(p)):
        return p.name
    parts = []
    for field in attrs.fields(type(p)):
        if not field.init:
            continue
        value = getattr(p, field.name)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else None
        if default is not attrs.NOTHING and value == default:
            continue
        parts.append(f"{field.name.replace('_', '-')}={_format_value(value)}")
    return f"{p.name}{{{','.join(parts)}}}" if parts else p.name


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    return str(value)


def format_pipeline(passes: Iterable[Pass]) -> str:
    """``"a,b{k=v}"`` for a list of pass instances."""
    return ",".join(format_pass(p) for p in passes)


# -- needs and providers ---------------------------------------------------------------------

#: What a pass may need → the name of the pass that provides it.
PROVIDERS: dict[str, str] = {"shapes": "infer-shapes"}


def register_provider(need: str, pass_name: str) -> None:
    """Declare that running pass ``pass_name`` provides ``need`` (e.g. "shapes")."""
    old = PROVIDERS.get(need)
    if old is not None and old != pass_name:
        raise QirError(f"{need!r} is provided by pass {old!r} already; cannot also be {pass_name!r}")
    PROVIDERS[need] = pass_name


def provider_of(need: str) -> str | None:
    """The name of the pass providing ``need``, or None when none is registered."""
    if need in PROVIDERS:
        return PROVIDERS[need]
    for name, cls in all_passes().items():
        if need in getattr(cls, "provides", ()):
            return name
    return None


def _provided_by(p: Pass) -> set[str]:
    own = set(getattr(type(p), "provides", ()))
    return own | {need for need, name in PROVIDERS.items() if name == p.name}


# -- instruments -----------------------------------------------------------------------------

class Instrument:
    """Sees every pass the manager runs; subclasses override the hooks they need."""

    def before_pipeline(self, graph: Graph, ctx: "PassContext") -> None:
        """Called once, before the first pass."""

    def after_pipeline(self, graph: Graph, ctx: "PassContext") -> None:
        """Called once, after the last pass (not after a failure)."""

    def before_pass(self, p: Pass, graph: Graph, ctx: "PassContext") -> None:
        """Called before ``p`` runs."""

    def after_pass(self, p: Pass, graph: Graph, ctx: "PassContext", changed: bool) -> None:
        """Called after ``p`` ran; raising here fails the pass (as verify-each does)."""

    def on_failure(self, p: Pass, graph: Graph, ctx: "PassContext", exc: BaseException) -> None:
        """Called when ``p`` (or an after-hook) raised; ``graph`` may be half-rewritten."""


def count_nodes(graph: Graph) -> int:
    """Nodes of the graph and its subgraphs."""
    return sum(1 for _ in graph.walk())


@attrs.define
class PassTiming:
    """What TimePasses records per pass name."""

    name: str
    runs: int = 0
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    delta: int = 0
    failed: bool = False


class TimePasses(Instrument):
    """Per-pass wall time and node counts; ``table()`` / ``print()`` / ``text()`` report them.

    Nodes before are counted before a pass's first run, nodes after after its last run; Δ sums
    the change of every run. The table shows before/after only for passes that ran once.
    """

    def __init__(self) -> None:
        self.timings: dict[str, PassTiming] = {}
        self._start = 0.0
        self._before = 0

    def before_pass(self, p, graph, ctx):
        self._before = count_nodes(graph)
        self._start = time.perf_counter()

    def after_pass(self, p, graph, ctx, changed):
        self._record(p, graph)

    def on_failure(self, p, graph, ctx, exc):
        if self._start:
            self._record(p, graph).failed = True

    def _record(self, p: Pass, graph: Graph) -> PassTiming:
        elapsed = time.perf_counter() - self._start
        self._start = 0.0
        t = self.timings.get(p.name)
        if t is None:
            t = self.timings[p.name] = PassTiming(p.name, nodes_before=self._before)
        after = count_nodes(graph)
        t.runs += 1
        t.seconds += elapsed
        t.nodes_after = after
        t.delta += after - self._before
        return t

    @property
    def total_seconds(self) -> float:
        return sum(t.seconds for t in self.timings.values())

    def table(self):
        """A rich Table: pass, runs, total ms, %, nodes before, nodes after, Δ nodes."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="pass timing", title_justify="left")
        for name, justify in (("pass", "left"), ("runs", "right"), ("total ms", "right"),
                              ("%", "right"), ("nodes before", "right"), ("nodes after", "right"),
                              ("Δ nodes", "right")):
            table.add_column(name, justify=justify)
        total = self.total_seconds
        for t in self.timings.values():
            name = escape(t.name) + (" [red](failed)[/red]" if t.failed else "")
            # Counts around several runs would include other passes' work: show only the Δ.
            single = t.runs == 1
            table.add_row(name, str(t.runs), f"{t.seconds * 1e3:.2f}",
                          f"{100 * t.seconds / total:.1f}" if total else "-",
                          str(t.nodes_before) if single else "·", str(t.nodes_after) if single else "·",
                          f"{t.delta:+d}")
        runs = sum(t.runs for t in self.timings.values())
        first = next(iter(self.timings.values()), None)
        table.add_row("[bold]total[/bold]", str(runs), f"{total * 1e3:.2f}", "100.0" if total else "-",
                      str(first.nodes_before) if first else "", "", f"{sum(t.delta for t in self.timings.values()):+d}")
        return table

    def print(self, stream: TextIO | None = None, width: int = 100) -> None:
        """Print the table to ``stream`` (stdout by default)."""
        from rich.console import Console

        Console(file=stream or sys.stdout, width=width, highlight=False, soft_wrap=True).print(self.table())

    def text(self, width: int = 100) -> str:
        """The table as plain text."""
        out = io.StringIO()
        self.print(out, width)
        return out.getvalue()


def _select(names: str | Iterable[str] | None) -> frozenset[str] | None:
    """``"all"`` → None (every pass); names → a set; nothing → empty set."""
    if names is None:
        return frozenset()
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    names = frozenset(n.strip() for n in names)
    return None if "all" in names else names


class PrintIR(Instrument):
    """Print the IR before and/or after passes: ``"all"`` or an iterable of pass names."""

    def __init__(self, before: str | Iterable[str] | None = None,
                 after: str | Iterable[str] | None = None, stream: TextIO | None = None):
        self.before, self.after, self.stream = _select(before), _select(after), stream

    def _print(self, when: str, p: Pass, graph: Graph) -> None:
        from qir.ir.printer import print_graph

        stream = self.stream or sys.stdout
        stream.write(f"// ----- IR {when} {p.name} ----- //\n{print_graph(graph)}\n")
        stream.flush()

    def before_pass(self, p, graph, ctx):
        if self.before is None or p.name in self.before:
            self._print("before", p, graph)

    def after_pass(self, p, graph, ctx, changed):
        if self.after is None or p.name in self.after:
            self._print("after", p, graph)


class VerifyEach(Instrument):
    """Run the verifier after every pass; a broken graph fails the pass that broke it."""

    def before_pipeline(self, graph, ctx):
        from qir.ir.verifier import verify

        try:
            verify(graph)
        except VerificationError as exc:
            raise VerificationError(f"the input graph is invalid before any pass ran: {exc.message}",
                                    hint=exc.hint) from exc

    def after_pass(self, p, graph, ctx, changed):
        from qir.ir.verifier import verify

        verify(graph)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class DumpIR(Instrument):
    """Save the IR to ``directory`` as ``00-input.qir``, then ``NN-<pass>.qir`` after each pass
    (qir.ir.serialize.save: large weights go to ``<file>.weights.npz`` beside each file, so every
    dump loads and runs with ``qirc``)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.count = 0
        self.files: list[Path] = []

    def _save(self, graph: Graph, label: str) -> None:
        from qir.ir import serialize

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.count:02d}-{_file_name(label)}.qir"
        serialize.save(graph, path)
        self.files.append(path)
        self.count += 1

    def before_pipeline(self, graph, ctx):
        self._save(graph, "input")

    def before_pass(self, p, graph, ctx):
        self._saved = False

    def after_pass(self, p, graph, ctx, changed):
        self._save(graph, p.name)
        self._saved = True

    def on_failure(self, p, graph, ctx, exc):
        # The half-rewritten graph (unless after_pass saved it), when it still prints.
        if getattr(self, "_saved", False):
            return
        try:
            self._save(graph, f"{p.name}.failed")
        except Exception:
            pass


# -- the context and the manager ---------------------------------------------------------------

@attrs.define
class PassContext:
    """What every pass sees: opt level, disabled passes, options and instruments.

    ``options`` maps a pass name to its options (as in ``name{k=v}``), used when a pipeline
    names the pass without options of its own. ``verify_each`` and ``dump_dir`` add the
    VerifyEach and DumpIR instruments. ``reproducer`` keeps a copy of the IR before each pass
    so that a failing pass leaves a reproducer (``snapshot_graph``: a copy sharing the weight arrays).
    """

    opt_level: int = 2
    disabled: frozenset[str] = attrs.field(factory=frozenset, converter=frozenset)
    verify_each: bool = False
    instruments: list[Any] = attrs.field(factory=list)
    options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    dump_dir: Path | None = attrs.field(default=None,
                                        converter=lambda d: None if d is None else Path(d))
    reproducer: bool = True

    def is_disabled(self, name: str) -> bool:
        return name in self.disabled

    def options_for(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))


class PassManager:
    """Runs passes in order on a graph, honouring the context.

    ``passes`` is a list of Pass instances, or any pipeline spec (string or list), resolved with
    the context's per-pass options.
    """

    def __init__(self, passes: Any, ctx: PassContext | None = None):
        self.ctx = ctx or PassContext()
        if not isinstance(passes, str):
            passes = list(passes)
        if isinstance(passes, str) or any(not isinstance(p, Pass) for p in passes):
            passes = resolve_pipeline(passes, self.ctx.options)
        self.passes = list(passes)
        self.reproducer_path: Path | None = None

    def _instruments(self) -> list[Instrument]:
        found = list(self.ctx.instruments)
        if self.ctx.dump_dir is not None and not any(isinstance(i, DumpIR) for i in found):
            found.append(DumpIR(self.ctx.dump_dir))
        if self.ctx.verify_each and not any(isinstance(i, VerifyEach) for i in found):
            found.append(VerifyEach())
        return found

    def run(self, graph: Graph) -> Graph:
        """Run every enabled pass on ``graph`` in place and return it."""
        instruments = self._instruments()
        for inst in instruments:
            inst.before_pipeline(graph, self.ctx)
        provided: set[str] = set()
        for p in self.passes:
            if self.ctx.is_disabled(p.name):
                continue
            for need in p.needs:
                if need not in provided:
                    self._provide(need, p, graph, instruments)
                    provided.add(need)
            self._run_one(p, graph, instruments)
            provided |= _provided_by(p)
        for inst in instruments:
            inst.after_pipeline(graph, self.ctx)
        return graph

    def _provide(self, need: str, p: Pass, graph: Graph, instruments: list[Instrument]) -> None:
        name = provider_of(need)
        if name is None:
            raise PassError(f"pass {p.name!r} needs {need!r}, but no registered pass provides it",
                            hint="register one with qir.passes.manager.register_provider",
                            pass_name=p.name)
        if name != p.name and not self.ctx.is_disabled(name):
            self._run_one(make_pass(name, self.ctx.options_for(name)), graph, instruments)

    def _run_one(self, p: Pass, graph: Graph, instruments: list[Instrument]) -> bool:
        snapshot = snapshot_graph(graph) if self.ctx.reproducer else None
        try:
            for inst in reversed(instruments):
                inst.before_pass(p, graph, self.ctx)
            changed = bool(p.run(graph, self.ctx))
            for inst in instruments:
                inst.after_pass(p, graph, self.ctx, changed)
        except PassError:
            raise
        except Exception as exc:
            for inst in instruments:
                try:
                    inst.on_failure(p, graph, self.ctx, exc)
                except Exception:  # an instrument must not hide the pass's own error
                    pass
            raise self._failure(p, snapshot, exc) from exc
        return changed

    def _failure(self, p: Pass, snapshot: Graph | None, exc: Exception) -> PassError:
        if isinstance(exc, VerificationError):
            what = f"pass {p.name!r} left an invalid graph: {exc.message}"
        elif isinstance(exc, QirError):
            what = f"pass {p.name!r} failed: {exc.message}"
        else:
            what = f"pass {p.name!r} failed: {type(exc).__name__}: {exc}"
        path = command = None
        if snapshot is not None:
            try:
                path, command = self._write_reproducer(p, snapshot)
            except Exception as write_exc:  # the original error matters more
                what += f" (writing the reproducer failed too: {write_exc})"
        self.reproducer_path = path
        hint = (f"the IR before the pass is in {path}; reproduce with: {command}" if path
                else getattr(exc, "hint", None))
        return _error_class(exc)(what, hint=hint, pass_name=p.name,
                                 reproducer=None if path is None else str(path), command=command)

    def _write_reproducer(self, p: Pass, snapshot: Graph) -> tuple[Path, str]:
        from qir.ir import serialize

        directory = self.ctx.dump_dir or Path(tempfile.mkdtemp(prefix="qir-reproducer-"))
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"reproducer-{_file_name(p.name)}"
        path = (directory / f"{stem}.qirb").resolve()
        serialize.save(snapshot, path)
        flags = " --verify-each" if self.ctx.verify_each or any(
            isinstance(i, VerifyEach) for i in self.ctx.instruments) else ""
        command = f"qirc opt {shlex.quote(str(path))} --passes {shlex.quote(format_pass(p))}{flags}"
        (directory / f"{stem}.sh").write_text(
            f"#!/bin/sh\n# pass {p.name!r} failed on {path.name} (the IR before it)\n{command}\n")
        return path, command


_ERROR_CLASSES: dict[type, type] = {}


def _error_class(exc: Exception) -> type[PassError]:
    """PassError, or for a QirError subclass (VerificationError, ShapeInferenceError...) a class
    deriving from both, so that callers catching the specific error still catch it."""
    cls = type(exc)
    if not isinstance(exc, QirError) or cls is QirError or isinstance(exc, PassError):
        return PassError
    if cls not in _ERROR_CLASSES:
        _ERROR_CLASSES[cls] = type(f"Pass{cls.__name__}", (PassError, cls),
                                   {"__module__": __name__, "__doc__": f"A {cls.__name__} inside a pass."})
    return _ERROR_CLASSES[cls]


def snapshot_graph(graph: Graph) -> Graph:
    """A copy of ``graph`` to keep before a pass runs (``Graph.copy``: shares the constant arrays,
    which passes replace rather than mutate, so it is cheap enough to take before every pass)."""
    return graph.copy()


__all__ = ["DumpIR", "Instrument", "PassContext", "PassManager", "PassTiming", "PrintIR",
           "PROVIDERS", "TimePasses", "VerifyEach", "count_nodes", "format_pass", "format_pipeline",
           "parse_pipeline", "provider_of", "register_provider", "resolve_pipeline",
           "snapshot_graph"]
