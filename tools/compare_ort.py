#!/usr/bin/env python
"""Compare qir's -O3 graphs with onnxruntime's own optimized graphs (the yardstick of issue 4).

Per model (the three torch models with BatchNorm kept, the nine light models of the onnx wheel,
the digits model) it prints: node count of the original ONNX model, of qir's -O3 graph exported
to ONNX, of onnxruntime's ORT_ENABLE_BASIC and ORT_ENABLE_ALL optimized graphs
(``SessionOptions.optimized_model_filepath``); BatchNormalization nodes left in qir's export;
the max relative difference max|Δ|/max|ref| of qir's -O3 outputs (reference interpreter) and of
the exported model run in onnxruntime, both against onnxruntime on the original model; the -O3
wall time; and, with ``--passes``, the per-pass times of the slowest model::

    .venv/bin/python tools/compare_ort.py                  # all models
    .venv/bin/python tools/compare_ort.py resnet18 digits  # some
    .venv/bin/python tools/compare_ort.py --markdown       # a table for the closing note

onnxruntime is a yardstick only (this file is a tool, not part of qir). The functions here are
also what tests/models/test_o3_models.py uses.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TORCH_MODELS = ("resnet18", "mobilenetv2", "transformer")
DIGITS = ROOT / "examples" / "digits" / "digits.onnx"


# -- onnxruntime ---------------------------------------------------------------------------------

def ort_session(model: onnx.ModelProto | str | Path, level: str = "disable", save_to: str | Path | None = None):
    """An onnxruntime CPU session at graph optimization ``level`` (disable/basic/extended/all)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if save_to is not None:
        so.optimized_model_filepath = str(save_to)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def ort_outputs(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray], level: str = "disable") -> list[np.ndarray]:
    """The model's outputs computed by onnxruntime (no graph optimizations by default)."""
    sess = ort_session(model, level)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def ort_optimized(model_path: str | Path, level: str) -> onnx.ModelProto:
    """onnxruntime's optimized graph at ``level`` ("basic" or "all") as a ModelProto."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"opt_{level}.onnx"
        ort_session(model_path, level, save_to=out)
        return onnx.load(str(out))


def node_count(model: onnx.ModelProto) -> int:
    """Top-level nodes of the main graph (Constant nodes included)."""
    return len(model.graph.node)


def op_histogram(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def rel_diff(actual: list[Any], expected: list[Any]) -> float:
    """max over outputs of max|actual − expected| / max|expected| (inf on shape mismatch)."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
        if a.shape != e.shape:
            return float("inf")
        if a.size == 0:
            continue
        scale = float(np.max(np.abs(e)))
        diff = float(np.max(np.abs(a - e)))
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


# -- qir ------------------------------------------------------------------------------------------

def qir_o3(model_path: str | Path, timing: bool = True, reproducer: bool = True):
    """Import the model, run -O3 and return (graph, seconds, TimePasses instrument or None).

    ``reproducer=False`` skips the pass manager's IR snapshot before each pass."""
    import qir
    import qir.passes
    from qir.passes import PassContext

    graph = qir.load_onnx(str(model_path))
    instruments = []
    timer = None
    if timing:
        try:
            from qir.passes.manager import TimePasses

            timer = TimePasses()
            instruments.append(timer)
        except ImportError:  # the timing instrument is not there (yet)
            timer = None
    ctx = PassContext(opt_level=3, instruments=instruments)
    if not reproducer:
        ctx.reproducer = False
    start = time.perf_counter()
    qir.passes.run(graph, opt_level=3, ctx=ctx)
    return graph, time.perf_counter() - start, timer


def qir_outputs(graph, feeds: dict[str, np.ndarray]) -> list[Any]:
    from qir.ir.interpreter import Interpreter

    return Interpreter(graph).run({v.name: feeds[v.name] for v in graph.inputs})


def export_o3(graph) -> onnx.ModelProto:
    from qir.frontends.onnx.exporter import export_onnx

    return export_onnx(graph)


# -- models ---------------------------------------------------------------------------------------

def without_final_softmax(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` whose output is the input of the Softmax producing its first output
    (None when there is none). The light models' weights are constants, so their softmax
    outputs are uniform whatever the logits: comparing logits is what checks the computation."""
    out = model.graph.output[0].name
    node = next((n for n in model.graph.node if n.op_type == "Softmax" and n.output[0] == out), None)
    if node is None:
        return None
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    index = list(model.graph.node).index(node)
    del stripped.graph.node[index]
    vi = stripped.graph.output[0]
    vi.name = node.input[0]
    return stripped


def dummy_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random normal float inputs (symbolic dims → 1) for the model's non-initializer inputs."""
    from onnx import helper

    rng = np.random.RandomState(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.randint(0, 2, size=shape).astype(dtype)
    return feeds


def digits_feeds(n: int = 32) -> dict[str, np.ndarray]:
    """The first ``n`` images of the digits test set (its input has a symbolic batch dim)."""
    data = np.load(DIGITS.with_name("digits_test.npz"))
    return {"input": np.ascontiguousarray(data["x"][:n])}


def model_cases(names: list[str] | None, workdir: Path) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    """(name, onnx path, feeds) of each model asked for (all when ``names`` is empty)."""
    cases = []
    want = set(names or [])
    pick = lambda n: not want or n in want  # noqa: E731
    if any(pick(n) for n in TORCH_MODELS):
        try:
            from tests.models import bn_models
        except ImportError as exc:
            print(f"# torch models skipped: {exc}", file=sys.stderr)
        else:
            for name in TORCH_MODELS:
                if pick(name):
                    path, feeds = bn_models.export(name, workdir / f"{name}.onnx")
                    cases.append((name, path, feeds))
    from tests.models.test_light_models import light_models, official_inputs

    for case in light_models():
        if pick(case["name"]):
            cases.append((case["name"], case["path"], official_inputs(onnx.load(str(case["path"])))))
    if pick("digits") and DIGITS.exists():
        cases.append(("digits", DIGITS, digits_feeds()))
    return cases


def measure(name: str, path: Path, feeds: dict[str, np.ndarray], reproducer: bool = True) -> dict[str, Any]:
    """One row of the table (errors are recorded, not raised)."""
    original = onnx.load(str(path))
    row: dict[str, Any] = {"model": name, "orig": node_count(original),
                           "orig_bn": op_histogram(original)["BatchNormalization"]}
    for level in ("basic", "all"):
        try:
            optimized = ort_optimized(path, level)
            row[f"ort_{level}"] = node_count(optimized)
            row[f"ort_{level}_ops"] = op_histogram(optimized)
        except Exception as exc:  # noqa: BLE001  (a yardstick failing is reported, not fatal)
            row[f"ort_{level}"] = f"error: {type(exc).__name__}"
    reference = ort_outputs(original, feeds)
    try:
        graph, seconds, timer = qir_o3(path, reproducer=reproducer)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"-O3 failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return row
    row["o3_seconds"] = seconds
    row["timer"] = timer
    row["qir_nodes"] = len(graph.nodes)
    try:
        row["qir_rel"] = rel_diff(qir_outputs(graph, feeds), reference)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"running -O3 graph failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    try:
        exported = export_o3(graph)
        row["o3_onnx"] = node_count(exported)
        row["o3_ops"] = op_histogram(exported)
        row["bn_left"] = op_histogram(exported)["BatchNormalization"]
        row["ort_rel"] = rel_diff(ort_outputs(exported, feeds), reference)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"export/ORT run failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return row


# -- printing ----------------------------------------------------------------------------------------

COLUMNS = [("model", "model"), ("orig", "original"), ("o3_onnx", "qir -O3 (ONNX)"), ("ort_basic", "ORT BASIC"),
           ("ort_all", "ORT ALL"), ("orig_bn", "BN before"), ("bn_left", "BN left"),
           ("qir_rel", "max rel Δ (qir ref)"), ("ort_rel", "max rel Δ (export in ORT)"), ("o3_seconds", "-O3 time")]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key.endswith("_rel"):
        return f"{value:.1e}"
    if key == "o3_seconds":
        return f"{value:.2f} s"
    return str(value)


def format_table(rows: list[dict[str, Any]], markdown: bool = True) -> str:
    header = [title for _, title in COLUMNS]
    body = [[_cell(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] if markdown else [line(header)]
    out += [line(b) for b in body]
    notes = [f"- {r['model']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out + ([""] + notes if notes else []))


def format_pass_times(row: dict[str, Any]) -> str:
    timer = row.get("timer")
    if timer is None:
        return f"{row['model']}: no per-pass timing (qir.passes.manager.TimePasses missing)"
    lines = [f"per-pass times, {row['model']} (-O3 total {row['o3_seconds']:.2f} s):"]
    for t in sorted(timer.timings.values(), key=lambda t: -t.seconds):
        lines.append(f"  {t.name:<24} {t.runs:>2} run(s) {t.seconds * 1000:9.1f} ms   nodes {t.nodes_before} → {t.nodes_after}")
    return "\n".join(lines)


def format_op_diff(row: dict[str, Any]) -> str | None:
    """Op types whose counts differ between qir's -O3 export and ORT BASIC (None when equal)."""
    ours, theirs = row.get("o3_ops"), row.get("ort_basic_ops")
    if ours is None or theirs is None or ours == theirs:
        return None
    diff = {op: (ours[op], theirs[op]) for op in sorted(set(ours) | set(theirs)) if ours[op] != theirs[op]}
    return f"{row['model']}: op (qir -O3, ORT BASIC): " + ", ".join(f"{op} ({a}, {b})" for op, (a, b) in diff.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("models", nargs="*", help="model names (default: all)")
    ap.add_argument("--markdown", action="store_true", help="a markdown table (the default is the same, aligned)")
    ap.add_argument("--passes", nargs="?", const="resnet50", default="resnet50",
                    help="print per-pass times of this model (default resnet50; 'all' for every model)")
    ap.add_argument("--no-reproducer", action="store_true",
                    help="run -O3 without the pass manager's per-pass IR snapshot (PassContext.reproducer)")
    ap.add_argument("--ops", action="store_true",
                    help="also list the op types whose counts differ from ORT BASIC's, per model")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, feeds in model_cases(args.models, Path(tmp)):
            print(f"# {name} ...", file=sys.stderr, flush=True)
            rows.append(measure(name, path, feeds, reproducer=not args.no_reproducer))
    print(format_table(rows, True))
    if args.ops:
        diffs = [d for d in map(format_op_diff, rows) if d]
        if diffs:
            print()
            print("\n".join(diffs))
    for row in rows:
        if args.passes == "all" or row["model"] == args.passes or (args.models and len(rows) == 1):
            if "o3_seconds" in row:
                print()
                print(format_pass_times(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
