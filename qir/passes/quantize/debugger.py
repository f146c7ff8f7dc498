"""The accuracy debugger and automatic mixed precision.

``compare(float_graph, quantized_graph, feeds)`` runs both graphs on the same feeds through the
reference interpreter, captures every tensor, matches them by name (the lowering keeps the float
tensors' names) and measures, per tensor, how far the quantized model's value is from the float
one: SQNR, MSE, cosine similarity, max abs error. The accumulated error says *where* accuracy is
lost; it does not say *why*: one badly quantized tensor spoils everything after it. So each
tensor also gets a local analysis on the float values:

- ``inherited_sqnr_db``: the producer op run in float on the quantized model's (dequantized)
  inputs — the error this tensor inherits. ``drop_db = inherited − sqnr`` is what the op itself
  (its weights, integer arithmetic and output rounding) loses.
- ``self_sqnr_db``: the float tensor quantized with its own params, nothing else.
- ``impact_sqnr_db``: the worst of ``self_sqnr_db`` and of each consumer's output recomputed in
  float with only this tensor quantized. It is what this tensor's own quantization costs, as
  seen by the ops that read it — it finds the outlier tensor whose own SQNR looks fine (the
  outlier channel carries the energy) while the small channels it wipes ruin the next op.

``impact16_sqnr_db`` is the same at 16 bits over the same range. Nodes with subgraphs (If/Loop)
get no local figures. ``AccuracyReport.suggestions()`` turns these into precision overrides
(``int16`` where 16 bits suffice, ``float`` otherwise), and ``auto_mixed_precision`` applies them
step by step until the graph outputs reach a target SQNR (or a user metric reaches its target).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple

import attrs
import numpy as np

from qir.errors import ExecutionError, OptionError, QirError
from qir.ir.graph import Graph, Node, Value
from qir.ir.interpreter import Interpreter
from qir.ir.opdef import call_kernel, get_op
from qir.ir.types import QuantParams, TensorType
from qir.passes.quantize.dataset import load_calibration_set
from qir.passes.quantize.lower import RULES
from qir.passes.quantize.params import (activation_params, dequantize_array, fake_quantize,
                                        qrange, quantize_array)

if TYPE_CHECKING:
    from qir.passes.quantize.pipeline import Calibrated, QuantizeResult

#: Samples ``auto_mixed_precision`` evaluates by default: running the interpreter is the cost.
DEFAULT_SAMPLES = 16

REPORT_FORMAT = "qir-accuracy-report"
REPORT_VERSION = 1

Feed = dict[str, np.ndarray]


# -- metrics -----------------------------------------------------------------------------------

def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10·log10(Σref² / Σerr²): inf when exact, −inf when the reference is all zeros but not
    the approximation."""
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@attrs.define
class _Accumulator:
    """Error statistics of an approximation of a reference, summed over feeds."""

    ref2: float = 0.0
    err2: float = 0.0
    approx2: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0
    count: int = 0

    def add(self, ref: np.ndarray, approx: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        approx = np.asarray(approx, dtype=np.float64)
        err = approx - ref
        self.ref2 += float(np.vdot(ref, ref))
        self.err2 += float(np.vdot(err, err))
        self.approx2 += float(np.vdot(approx, approx))
        self.dot += float(np.vdot(ref, approx))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(err), initial=0.0)))
        self.count += ref.size

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.ref2, self.err2)

    @property
    def mse(self) -> float:
        return self.err2 / self.count if self.count else 0.0

    @property
    def cosine(self) -> float:
        if self.ref2 == 0.0 and self.approx2 == 0.0:
            return 1.0
        if self.ref2 == 0.0 or self.approx2 == 0.0:
            return 0.0
        return self.dot / math.sqrt(self.ref2 * self.approx2)


# -- the report --------------------------------------------------------------------------------

def _json_float(x: float | None) -> Any:
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _from_json_float(x: Any) -> float | None:
    return None if x is None else float(x)


@attrs.define
class TensorReport:
    """The accuracy of one tensor of the quantized model against the float model.

    ``precision`` is how the quantized model holds it (``int8``, ``int16``, ``float``); ``node``
    / ``op`` produced it in the float graph (None for a graph input) and ``provenance`` names
    the source-model nodes. The SQNRs are in dB (higher is better); see the module docstring for
    ``inherited_sqnr_db``, ``self_sqnr_db`` and ``impact_sqnr_db``; ``impact16_sqnr_db`` is the
    impact were this (8-bit) tensor 16-bit over the same range — measured, not extrapolated
    (+48 dB from an 8-bit impact near 0 dB, where the small values are wiped out, is wrong).
    """

    name: str
    node: str | None
    op: str | None
    provenance: tuple[str, ...] = attrs.field(converter=tuple)
    precision: str
    sqnr_db: float
    mse: float
    cosine: float
    max_abs_error: float
    inherited_sqnr_db: float | None = None
    self_sqnr_db: float | None = None
    impact_sqnr_db: float | None = None
    impact16_sqnr_db: float | None = None
    consumers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    consumer_ops: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    is_output: bool = False

    @property
    def drop_db(self) -> float | None:
        """SQNR lost at this tensor itself: inherited − actual (None for graph inputs)."""
        if self.inherited_sqnr_db is None:
            return None
        if self.inherited_sqnr_db == self.sqnr_db:  # inf − inf
            return 0.0
        return self.inherited_sqnr_db - self.sqnr_db

    @property
    def sensitivity_db(self) -> float:
        """The SQNR this tensor's own quantization leaves (lower is more sensitive)."""
        if self.impact_sqnr_db is not None:
            return self.impact_sqnr_db
        return math.inf if self.precision == "float" else self.sqnr_db

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["provenance"] = list(self.provenance)
        data["consumers"] = list(self.consumers)
        data["consumer_ops"] = list(self.consumer_ops)
        for key in _FLOAT_FIELDS:
            data[key] = _json_float(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorReport":
        data = dict(data)
        for key in _FLOAT_FIELDS:
            data[key] = _from_json_float(data.get(key))
        known = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_FLOAT_FIELDS = ("sqnr_db", "mse", "cosine", "max_abs_error", "inherited_sqnr_db", "self_sqnr_db",
                 "impact_sqnr_db", "impact16_sqnr_db")


@attrs.define
class Suggestion:
    """Raise ``target`` (a tensor or a node name, per ``kind``) to ``precision``, because
    ``reason``; ``sqnr_db`` is the SQNR that motivates it."""

    target: str
    kind: str  # "tensor" or "node"
    precision: str
    reason: str
    sqnr_db: float


@attrs.define
class Suggestions(Mapping[str, str]):
    """What to raise to recover accuracy: a mapping of tensor / node name → ``int16`` /
    ``float``, ready for ``Config(overrides=...)``, worst first; ``details`` gives each
    Suggestion with its reason."""

    details: list[Suggestion]
    overrides: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.overrides[name]

    def __iter__(self):
        return iter(self.overrides)

    def __len__(self) -> int:
        return len(self.overrides)


@attrs.define
class AccuracyReport:
    """Per-tensor accuracy of a quantized graph against its float graph, worst SQNR first."""

    rows: list[TensorReport] = attrs.field(converter=list)
    outputs: list[str] = attrs.field(converter=list)
    samples: int = 0

    def __attrs_post_init__(self) -> None:
        order = {id(r): i for i, r in enumerate(self.rows)}
        self.rows.sort(key=lambda r: (_sort_key(r.sqnr_db), order[id(r)]))

    def __getitem__(self, name: str) -> TensorReport:
        for row in self.rows:
            if row.name == name:
                return row
        raise QirError(f"tensor {name!r} is not in the accuracy report",
                       hint="the report holds tensors present in both graphs, under the float "
                            "graph's names")

    def __contains__(self, name: object) -> bool:
        return any(r.name == name for r in self.rows)

    @property
    def output_sqnr_db(self) -> float:
        """The worst SQNR among the graph outputs."""
        values = [r.sqnr_db for r in self.rows if r.is_output]
        return min(values) if values else math.inf

    # -- suggestions -------------------------------------------------------------------------
    def suggestions(self, target_sqnr_db: float = 30.0) -> Suggestions:
        """What to raise so that no tensor's own quantization costs more than
        ``target_sqnr_db``, worst first: tensors whose impact is below it go to ``int16`` when
        16 bits reach it (else ``float``: their producer and readers stay float); nodes whose
        own arithmetic or weights lose it (the drop from inherited to actual SQNR) go to
        ``float``. ``overrides`` is the dict for ``Config(overrides=...)``."""
        items = _candidates(self.rows, target_sqnr_db)
        overrides: dict[str, str] = {}
        for item in items:
            if overrides.get(item.target) != "float":
                overrides[item.target] = item.precision
        return Suggestions(items, overrides)

    # -- output ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "samples": self.samples,
                "outputs": list(self.outputs), "rows": [r.to_dict() for r in self.rows]}

    def to_json(self, indent: int | None = 1) -> str:
        """The report as JSON (non-finite SQNRs as the strings "inf" / "-inf")."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> "AccuracyReport":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise QirError(f"not an accuracy report: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise QirError("not an accuracy report (no \"format\": \"qir-accuracy-report\")")
        if data.get("version") != REPORT_VERSION:
            raise QirError(f"accuracy report version {data.get('version')!r} is not "
                           f"{REPORT_VERSION}", hint="regenerate it with this qir")
        return cls([TensorReport.from_dict(r) for r in data["rows"]], list(data["outputs"]),
                   int(data["samples"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON report atomically (a reader never sees half a file)."""
        from qir.ir.serialize import write_atomic

        write_atomic(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AccuracyReport":
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise QirError(f"{path}: cannot read the accuracy report ({exc.strerror or exc})") from None
        return cls.from_json(text)

    def table(self, limit: int | None = None, target_sqnr_db: float = 30.0):
        """A rich Table of the ``limit`` worst tensors (all by default); SQNRs below
        ``target_sqnr_db`` in red."""
        from rich.table import Table

        table = Table(title=f"Quantization accuracy, worst first ({self.samples} samples; "
                            f"output SQNR {_fmt(self.output_sqnr_db)} dB). SQNRs in dB; drop: "
                            "lost by the op itself; impact: left by this tensor's own "
                            "quantization (@16: at 16 bits)")
        table.add_column("tensor", overflow="fold", min_width=24, ratio=3)
        table.add_column("op", overflow="fold", min_width=10, ratio=1)
        table.add_column("prec", no_wrap=True)
        for column in ("SQNR", "drop", "impact", "@16", "MSE", "cosine", "max|err|"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("source", overflow="fold", ratio=2)
        for row in self.rows[:limit]:
            def db(x):
                text = _fmt(x)
                return f"[red]{text}[/red]" if x is not None and x < target_sqnr_db else text
            table.add_row(row.name + (" (output)" if row.is_output else ""), row.op or "input",
                          row.precision, db(row.sqnr_db), _fmt(row.drop_db), db(row.impact_sqnr_db),
                          db(row.impact16_sqnr_db), f"{row.mse:.3g}", f"{row.cosine:.5f}",
                          f"{row.max_abs_error:.3g}", ", ".join(row.provenance))
        return table


def _sort_key(x: float | None) -> float:
    return math.inf if x is None or math.isnan(x) else x


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if x == math.inf else ("-inf" if x == -math.inf else f"{x:.1f}")


def _candidates(rows: Iterable[TensorReport], target: float) -> list[Suggestion]:
    """The suggestions for ``rows``, worst first (ties by name)."""
    ordered = sorted(rows, key=lambda r: (_sort_key(r.sensitivity_db), r.name))
    items = [item for row in ordered for item in _suggest(row, target)]
    return sorted(items, key=lambda s: (_sort_key(s.sqnr_db), s.target))


def _suggest(row: TensorReport, target: float) -> list[Suggestion]:
    impact = row.sensitivity_db
    if row.precision != "float" and impact < target:
        suggestion = _raise_tensor(row, impact, target)
        if suggestion:
            return suggestion
    inherited = row.inherited_sqnr_db
    if (row.node is not None and inherited is not None and row.precision != "float"
            and row.sqnr_db < target <= inherited
            and (row.self_sqnr_db is None or row.self_sqnr_db >= target + 3)):
        why = (f"{row.op} loses {_fmt(row.drop_db)} dB in its own arithmetic or weights "
               f"({_fmt(inherited)} → {_fmt(row.sqnr_db)} dB)")
        return [Suggestion(row.node, "node", "float", why, row.sqnr_db)]
    return []


def _raise_tensor(row: TensorReport, impact: float, target: float) -> list[Suggestion]:
    """int8 → int16 where 16 bits reach ``target`` (or nothing higher is possible: graph
    inputs and outputs are always quantized), else float: the producer and the readers."""
    at16 = row.impact16_sqnr_db
    fixed = row.node is None or row.is_output
    if row.precision == "int8" and (fixed or at16 is None or at16 >= target):
        why = f"its own quantization leaves {_fmt(impact)} dB; at 16 bits {_fmt(at16)} dB"
        return [Suggestion(row.name, "tensor", "int16", why, impact)]
    if fixed:
        return []
    why = (f"its own quantization leaves {_fmt(impact)} dB"
           + (f", {_fmt(at16)} dB at 16 bits" if row.precision == "int8" else " at 16 bits"))
    return [Suggestion(n, "node", "float", f"{why}: keep {row.name} float", impact)
            for n, op in ((row.node, row.op), *zip(row.consumers, row.consumer_ops))
            if op in RULES]  # an op without an integer rule is float already


# -- running and comparing -----------------------------------------------------------------------

def _top_level_names(graph: Graph) -> dict[int, str]:
    found = {id(v): v.name for v in graph.inputs}
    for node in graph.nodes:
        for v in node.outputs:
            found[id(v)] = v.name
    return found


def _capture(graph: Graph, feed: Feed, keep: Callable[[Value], bool] = lambda v: True
             ) -> tuple[dict[str, np.ndarray], list[Any]]:
    """Run ``graph`` on ``feed``: (the arrays of its inputs and node outputs by name, outputs).
    Subgraph values are left out: their names may repeat the outer graph's."""
    names = _top_level_names(graph)
    arrays: dict[str, np.ndarray] = {}

    def hook(value: Value, array: Any) -> None:
        name = names.get(id(value))
        if name is not None and isinstance(array, np.ndarray) and keep(value):
            arrays[name] = array

    outputs = Interpreter(graph, hook).run(feed)
    return arrays, outputs


def _check_shapes(name: str, ref: np.ndarray, approx: np.ndarray) -> None:
    if ref.shape != approx.shape:
        raise QirError(f"tensor {name!r} has shape {approx.shape} in the quantized graph but "
                       f"{ref.shape} in the float graph",
                       hint="compare a quantized graph with the float graph it was made from")


def _is_float_array(array: Any) -> bool:
    return isinstance(array, np.ndarray) and array.dtype.kind == "f"


def _quant_of(value: Value) -> QuantParams | None:
    return value.type.quant if isinstance(value.type, TensorType) else None


def _precision(value: Value) -> str:
    qp = _quant_of(value)
    return "float" if qp is None else f"int{qp.bitwidth}"


def _twins(quantized: Graph, names: Iterable[str]) -> dict[str, Value]:
    """For each float tensor name, the quantized graph's value standing for it: the output of
    ``quant.quantize_linear`` of a float-computed value of that name (what the integer ops
    read), else the value of that name."""
    by_name = {v.name: v for v in quantized.values() if v.const is None}
    twins = {}
    for node in quantized.nodes:
        if node.op == "quant.quantize_linear" and node.inputs[0] is not None:
            twins.setdefault(node.inputs[0].name, node.outputs[0])
    return {n: twins.get(n) or by_name[n] for n in names if n in twins or n in by_name}


class _Comparison:
    """Compares quantized versions of ``float_graph`` on ``feeds``; the float run happens once
    (``auto_mixed_precision`` compares many quantized graphs against it)."""

    def __init__(self, float_graph: Graph, feeds: list[Feed]):
        self.graph = float_graph
        self.feeds = feeds
        self._float_runs: list[tuple[dict[str, Any], list[Any]]] | None = None

    def float_runs(self) -> list[tuple[dict[str, Any], list[Any]]]:
        if self._float_runs is None:
            runs = []
            for index, feed in enumerate(self.feeds):
                try:
                    arrays, outputs = _capture(self.graph, feed)
                except ExecutionError as exc:
                    raise ExecutionError(f"float model, sample {index}: {exc.message}",
                                         hint=exc.hint) from exc
                runs.append((arrays, outputs))
            self._float_runs = runs
        return self._float_runs

    def run(self, quantized: Graph) -> tuple[AccuracyReport, list[list[Any]], list[list[Any]]]:
        """The report, and the float and (dequantized) quantized outputs per feed."""
        compared = [v.name for v in self.graph.values()
                    if v.const is None and isinstance(v.type, TensorType)
                    and (v.type.dtype is None or v.type.dtype.is_float)]
        twins = _twins(quantized, compared)
        stats: dict[str, _Accumulator] = {}
        local = _LocalAnalysis(self.graph, twins)
        outs_float, outs_quant = [], []
        for index, (feed, (ref, ref_outputs)) in enumerate(zip(self.feeds, self.float_runs())):
            approx = self._quantized_values(quantized, feed, twins, index)
            for name in twins:
                if name in ref and name in approx and _is_float_array(ref[name]):
                    _check_shapes(name, ref[name], approx[name])
                    stats.setdefault(name, _Accumulator()).add(ref[name], approx[name])
            local.add(ref, approx)
            outs_float.append(list(ref_outputs))
            outs_quant.append([approx.get(v.name, out) for v, out in
                               zip(self.graph.outputs, ref_outputs)])
        values = {v.name: v for v in self.graph.values()}
        rows = [self._row(values[name], acc, twins[name], local) for name, acc in stats.items()]
        report = AccuracyReport(rows, [v.name for v in self.graph.outputs], _count_samples(self.feeds))
        return report, outs_float, outs_quant

    def _row(self, value: Value, acc: _Accumulator, twin: Value, local: "_LocalAnalysis") -> TensorReport:
        name, producer = value.name, value.producer
        return TensorReport(
            name, producer.name if producer else None, producer.op if producer else None,
            producer.provenance if producer else (), _precision(twin), acc.sqnr_db, acc.mse,
            acc.cosine, acc.max_abs, local.inherited_sqnr(name), local.self_sqnr(name),
            local.impact_sqnr(name), local.impact_sqnr(name, wide=True),
            [n.name for n in value.users], [n.op for n in value.users],
            any(v is value for v in self.graph.outputs))

    def _quantized_values(self, quantized: Graph, feed: Feed, twins: dict[str, Value],
                          index: int) -> dict[str, np.ndarray]:
        """The quantized graph's value of each float tensor, dequantized, by float name."""
        qfeed = {}
        for value in quantized.inputs:
            if value.name not in feed:
                raise QirError(f"the feeds have no input {value.name!r} of the quantized graph")
            qp = _quant_of(value)
            qfeed[value.name] = feed[value.name] if qp is None else quantize_array(feed[value.name], qp)
        wanted = {id(v): n for n, v in twins.items()}
        try:
            arrays, _ = _capture(quantized, qfeed, lambda v: id(v) in wanted)
        except ExecutionError as exc:
            raise ExecutionError(f"quantized model, sample {index}: {exc.message}",
                                 hint=exc.hint) from exc
        found = {}
        for name, value in twins.items():
            array = arrays.get(value.name)
            if array is None:
                continue
            qp = _quant_of(value)
            found[name] = dequantize_array(array, qp) if qp is not None else array
        return found


class _LocalAnalysis:
    """Per-node recomputation on the float values: what each tensor inherits from its inputs,
    and what each tensor's own quantization costs at its readers."""

    def __init__(self, graph: Graph, twins: dict[str, Value]):
        self.graph = graph
        self.twins = twins
        self.params = {n: _quant_of(v) for n, v in twins.items() if _quant_of(v) is not None}
        self.wide = {n: _widened(qp) for n, qp in self.params.items() if qp.bitwidth == 8}
        self.inherited: dict[str, _Accumulator] = {}
        self.own: dict[str, _Accumulator] = {}
        self.own16: dict[str, _Accumulator] = {}
        # (tensor, reader node, reader output) -> the reader's output with only tensor quantized
        self.at_reader: dict[tuple[str, str, str], _Accumulator] = {}
        self.at_reader16: dict[tuple[str, str, str], _Accumulator] = {}

    def add(self, ref: dict[str, Any], approx: dict[str, Any]) -> None:
        for params, own in ((self.params, self.own), (self.wide, self.own16)):
            for name, qp in params.items():
                if name in ref and _is_float_array(ref[name]):
                    own.setdefault(name, _Accumulator()).add(ref[name], fake_quantize(ref[name], qp))
        for node in self.graph.nodes:
            self._node(node, ref, approx)

    def _node(self, node: Node, ref: dict[str, Any], approx: dict[str, Any]) -> None:
        opdef = get_op(node.op)
        outputs = [(i, v.name) for i, v in enumerate(node.outputs)
                   if v.name in self.twins and _is_float_array(ref.get(v.name))]
        if opdef.needs_runner or not outputs or any(
                v is not None and v.const is None and v.name not in ref for v in node.inputs):
            return
        inputs = [None if v is None else (v.const if v.const is not None else ref[v.name])
                  for v in node.inputs]
        readable = [i for i, v in enumerate(node.inputs)
                    if v is not None and v.const is None and v.name in approx]
        if readable:
            mixed = list(inputs)
            for i in readable:
                mixed[i] = approx[node.inputs[i].name].astype(inputs[i].dtype, copy=False)
            self._accumulate(opdef, node, mixed, outputs, ref, self.inherited, lambda o: o)
        for name in dict.fromkeys(v.name for v in node.inputs if v is not None and v.const is None):
            if not _is_float_array(ref[name]):
                continue
            for params, into in ((self.params, self.at_reader), (self.wide, self.at_reader16)):
                qp = params.get(name)
                if qp is None:
                    continue
                fq = fake_quantize(ref[name], qp)
                one = [fq if v is not None and v.name == name and v.const is None else x
                       for v, x in zip(node.inputs, inputs)]
                self._accumulate(opdef, node, one, outputs, ref, into,
                                 lambda o, name=name: (name, node.name, o))

    @staticmethod
    def _accumulate(opdef, node, inputs, outputs, ref, into, key) -> None:
        try:
            results = call_kernel(opdef, node, inputs)
        except Exception:  # an input the op cannot take dequantized: no local figure for it
            return
        for i, name in outputs:
            if i < len(results) and isinstance(results[i], np.ndarray) \
                    and results[i].shape == ref[name].shape:
                into.setdefault(key(name), _Accumulator()).add(ref[name], results[i])

    def inherited_sqnr(self, name: str) -> float | None:
        acc = self.inherited.get(name)
        return None if acc is None else acc.sqnr_db

    def self_sqnr(self, name: str) -> float | None:
        acc = self.own.get(name)
        return None if acc is None else acc.sqnr_db

    def impact_sqnr(self, name: str, wide: bool = False) -> float | None:
        at_reader, own = (self.at_reader16, self.own16) if wide else (self.at_reader, self.own)
        values = [acc.sqnr_db for (tensor, _, _), acc in at_reader.items() if tensor == name]
        if name in own:
            values.append(own[name].sqnr_db)
        return min(values) if values else None


def _widened(qp: QuantParams) -> QuantParams:
    """16-bit params over the same range as 8-bit ``qp``."""
    lo, hi = qrange(qp)
    return activation_params((lo - qp.zero_point[0]) * qp.scale[0],
                             (hi - qp.zero_point[0]) * qp.scale[0], 16, qp.signed)


def _count_samples(feeds: list[Feed]) -> int:
    return sum(_feed_batch(feed) for feed in feeds)


def _feed_batch(feed: Feed) -> int:
    """Samples in ``feed``: the common leading dim of its arrays (1 when they disagree)."""
    dims = {a.shape[0] for a in feed.values() if isinstance(a, np.ndarray) and a.ndim}
    return dims.pop() if len(dims) == 1 else 1


def _subset(feeds: list[Feed], graph: Graph, max_samples: int | None) -> list[Feed]:
    """The first ``max_samples`` samples of ``feeds``, slicing a batch when the inputs' leading
    dims are symbolic (a batch axis)."""
    if max_samples is None:
        return feeds
    batched = all(isinstance(v.type, TensorType) and v.type.shape and
                  not isinstance(v.type.shape[0], int) for v in graph.inputs)
    chosen, total = [], 0
    for feed in feeds:
        if total >= max_samples:
            break
        n = _feed_batch(feed) if batched else 1
        if total + n > max_samples and batched:
            feed = {k: a[:max_samples - total] for k, a in feed.items()}
            n = max_samples - total
        chosen.append(feed)
        total += n
    return chosen


def compare(float_graph: Graph, quantized_graph: Graph, feeds: Any, *,
            max_samples: int | None = None) -> AccuracyReport:
    """Per-tensor accuracy of ``quantized_graph`` against ``float_graph`` on float ``feeds``
    (anything ``load_calibration_set`` takes); the quantized graph's inputs get the feeds
    quantized with their params. ``max_samples`` keeps only the first samples."""
    feeds = _subset(load_calibration_set(feeds, float_graph), float_graph, max_samples)
    report, _, _ = _Comparison(float_graph, feeds).run(quantized_graph)
    return report


def debug_accuracy(calibrated: "Calibrated", result: "QuantizeResult | None" = None,
                   feeds: Any = None, *,
                   max_samples: int | None = DEFAULT_SAMPLES) -> AccuracyReport:
    """The accuracy report of ``result`` (default: ``calibrated.lower()``) against the prepared
    float graph of ``calibrated`` (a ``pipeline.Calibrated``), on ``feeds`` (default: the
    calibration feeds)."""
    result = result if result is not None else calibrated.lower()
    feeds = calibrated.feeds if feeds is None else feeds
    return compare(calibrated.graph, result.graph, feeds, max_samples=max_samples)


# -- automatic mixed precision ---------------------------------------------------------------------

class Step(NamedTuple):
    """One evaluation of ``auto_mixed_precision``: the ``change`` made before it ({} for the
    W8A8 start) and the resulting ``score`` (output SQNR in dB, or the user metric)."""

    step: int
    change: dict[str, str]
    score: float


@attrs.define
class MixedPrecisionResult:
    """What ``auto_mixed_precision`` chose: ``result`` (the final QuantizeResult), ``chosen``
    (tensor / node name → ``int16`` / ``float``, usable as ``Config(overrides=...)``),
    ``history`` (one Step per lowering), ``met`` (whether the target was reached) and the
    final ``report``."""

    result: "QuantizeResult"
    chosen: dict[str, str]
    history: list[Step]
    met: bool
    report: AccuracyReport
    target: float


Metric = Callable[[dict[str, Any], dict[str, Any]], float]


def auto_mixed_precision(calibrated: "Calibrated", *, target_sqnr_db: float = 30.0, metric: Metric | None = None,
                         target: float | None = None, feeds: Any = None, max_steps: int = 8,
                         max_samples: int | None = DEFAULT_SAMPLES) -> MixedPrecisionResult:
    """Start at ``calibrated.config`` (W8A8) and raise the most sensitive tensors to int16, then
    float, until the graph outputs' SQNR against float reaches ``target_sqnr_db`` — or, given
    ``metric(outputs_float, outputs_quant) -> float`` (higher is better; dicts of output name →
    array, samples concatenated on axis 0), until it reaches ``target``.

    Each step lowers once and runs the quantized graph on at most ``max_samples`` samples of
    ``feeds`` (default: the calibration feeds). The tensors raised at a step are those whose own
    quantization (``impact_sqnr_db``) leaves less than ``target_sqnr_db``; when none does and
    the output still misses, the 1, 2, 4... most sensitive. Deterministic: ties go by name.
    The user's own overrides in the config are kept as they are. ``result.config`` carries
    the chosen overrides (with ``mixed=False``: it reproduces this graph without a search).
    """
    if metric is not None and target is None:
        raise OptionError("auto_mixed_precision(metric=...) needs target=: the metric value to reach")
    graph = calibrated.graph
    feeds = _subset(load_calibration_set(calibrated.feeds if feeds is None else feeds, graph),
                    graph, max_samples)
    comparison = _Comparison(graph, feeds)
    goal = target_sqnr_db if metric is None else float(target)
    user = dict(calibrated.config.overrides)
    chosen: dict[str, str] = {}
    history: list[Step] = []
    change: dict[str, str] = {}
    batch = 1
    for step in range(max_steps + 1):
        config = calibrated.config.evolve(overrides={**chosen, **user}, mixed=False)
        result = calibrated.lower(config)
        report, outs_float, outs_quant = comparison.run(result.graph)
        score = report.output_sqnr_db if metric is None else float(
            metric(_stack(graph, outs_float), _stack(graph, outs_quant)))
        history.append(Step(step, change, score))
        if score >= goal or step == max_steps:
            break
        change, widened = _next_change(report, target_sqnr_db, chosen, user, batch)
        if not change:
            break
        if widened:  # many small errors add up: raise twice as many next time
            batch *= 2
        chosen = {**chosen, **change}
    # An int16 asked for a tensor that ended up float everywhere (its readers went float) did
    # nothing: drop it, so that ``chosen`` lists only what matters (the lowering is the same).
    idle = [n for n, p in chosen.items() if p == "int16" and n in report and report[n].precision == "float"]
    if idle:
        chosen = {n: p for n, p in chosen.items() if n not in idle}
        result = calibrated.lower(calibrated.config.evolve(overrides={**chosen, **user}, mixed=False))
    met = history[-1].score >= goal
    return MixedPrecisionResult(result, chosen, history, met, report, goal)


def _stack(graph: Graph, runs: list[list[Any]]) -> dict[str, Any]:
    out = {}
    for i, value in enumerate(graph.outputs):
        parts = [run[i] for run in runs]
        try:
            out[value.name] = np.concatenate([np.asarray(p) for p in parts], axis=0)
        except ValueError:
            out[value.name] = parts
    return out


def _next_change(report: AccuracyReport, target: float, chosen: dict[str, str],
                 user: Mapping[str, str], batch: int) -> tuple[dict[str, str], bool]:
    """The next group to raise — every suggestion at ``target`` the user did not fix — and
    whether it is instead the fallback group: the ``batch`` most sensitive tensors raised one
    step, when no single tensor or node misses ``target`` but their errors add up."""
    def free(name: str) -> bool:
        return name not in user and chosen.get(name) != "float"

    change = {s.target: s.precision for s in _candidates(report.rows, target)
              if free(s.target) and chosen.get(s.target) != s.precision}
    if change:
        return change, False
    rows = [r for r in report.rows if r.precision != "float" and free(r.name)
            and (r.node is None or free(r.node))]
    rows.sort(key=lambda r: (_sort_key(r.sensitivity_db), r.name))
    for row in rows:
        if len(change) >= batch:
            break
        step = _one_step(row)
        if step and any(chosen.get(k) != v and free(k) for k, v in step.items()):
            change.update(step)
    return change, True


def _one_step(row: TensorReport) -> dict[str, str]:
    """int8 → int16; int16 → float (producer and readers; not for graph inputs / outputs)."""
    if row.precision == "int8":
        return {row.name: "int16"}
    if row.node is None or row.is_output:
        return {}
    return {n: "float" for n, op in ((row.node, row.op), *zip(row.consumers, row.consumer_ops))
            if op in RULES}


__all__ = ["AccuracyReport", "TensorReport", "Suggestion", "Suggestions", "MixedPrecisionResult",
           "Step", "compare", "debug_accuracy", "auto_mixed_precision", "sqnr_db"]
