"""``qirc bench MODEL --target T --threads 1,2 [--compare onnxruntime]``: latency percentiles,
throughput and peak memory per thread count, optionally against onnxruntime.

onnxruntime is a yardstick, never a dependency of qir: it is imported only here, inside the
command, and only for ``--compare onnxruntime`` (DESIGN.md: oracles never under qir/ "except
behind qirc bench --compare"). With it, qir and onnxruntime runs alternate one by one, so machine
noise hits both alike, and onnxruntime gets ``intra_op_num_threads`` = the same thread count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from qir.cli.common import (AliasedOption, apply_input_dims, input_dim_option, load_graph,
                            model_argument, resolve_model, write_bytes_atomic)
from qir.cli.compile_cmd import open_artifact, target_option
from qir.errors import OptionError

def parse_threads(text: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]``."""
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise OptionError(f"--threads {text}: expected positive integers separated by commas",
                          hint="e.g. --threads 1,2,4")
    return list(dict.fromkeys(counts))


def onnxruntime_runner(path: Path, feeds: dict[str, Any], threads: int):
    """A no-argument function running the ONNX model at ``path`` in onnxruntime on ``feeds``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OptionError("--compare onnxruntime needs the onnxruntime package",
                          hint="pip install onnxruntime (it is in qir's [dev] extra)") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    missing = sorted(set(feeds) - names)
    if missing:
        raise OptionError(f"{path}: onnxruntime's model has no input(s) {', '.join(missing)}",
                          hint="compare only the .onnx model that qir compiled")
    return lambda: session.run(None, feeds)


#: ``--compare`` runtimes (ONNX models only): name → (path, feeds, threads) → a run() function.
COMPARE = {"onnxruntime": onnxruntime_runner}
#: Their short names in the table.
LABELS = {"onnxruntime": "ORT"}


@click.command()
@model_argument
@target_option(default=None)
@click.option("--threads", "threads_text", cls=AliasedOption, aliases=("--num-threads",),
              default="1", show_default=True, metavar="N[,N...]",
              help="Thread counts to measure, e.g. 1,2,4.")
@click.option("--compare", type=click.Choice(sorted(COMPARE)), default=None,
              help="Also time this runtime, interleaved with qir (ONNX models only).")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed runs per thread count.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed runs first.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="The value of every symbolic dim (e.g. the batch N) of the random inputs.")
@click.option("--profile-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Time every layer too; write a chrome://tracing / Perfetto trace here.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the numbers as JSON here.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Slowest layers shown with --profile-out.")
@input_dim_option
def bench(model: Path | None, model_option: Path | None, target: str | None, threads_text: str,
          compare: str | None, runs: int, warmup: int, batch: int, profile_out: Path | None,
          json_out: Path | None, top: int, input_dims: Any) -> None:
    """Benchmark MODEL (a model file or a `qirc compile` folder) on random inputs: p50/p95/p99
    latency, throughput and peak memory for each thread count."""
    from rich.console import Console

    from qir.runtime.profiler import profile, random_feeds

    path = resolve_model(model, model_option)
    threads = parse_threads(threads_text)
    if compare and path.suffix != ".onnx":
        raise OptionError(f"--compare {compare} needs an .onnx MODEL, got {path}")
    build = _builder(path, target, input_dims)
    console = Console()
    rows, profiles, feeds = [], [], None
    for count in threads:
        compiled = build(count)
        feeds = feeds if feeds is not None else random_feeds(compiled, batch=batch)
        row: dict[str, Any] = {"threads": count}
        samples = None
        if compare:
            other = COMPARE[compare](path, feeds, count)
            from qir.runtime.profiler import LatencyStats, interleaved_latencies

            samples, other_samples = interleaved_latencies([lambda: compiled.run(feeds), other],
                                                           warmup=warmup, runs=runs)
            row[compare] = LatencyStats.of_seconds(other_samples).to_dict()
        prof = profile(compiled, feeds, warmup=warmup, runs=runs, latency_samples=samples,
                       layers=profile_out is not None)
        row["qir"] = prof.to_dict()
        if compare:
            row["ratio"] = row[compare]["p50_ms"] / prof.latency.p50
        rows.append(row)
        profiles.append(prof)
    console.print(_table(rows, compiled.target, runs, batch, compare))
    for row in rows:
        if compare:
            click.echo(f"threads {row['threads']}: {compare} p50 / qir p50 = {row['ratio']:.2f} "
                       f"({'qir faster' if row['ratio'] > 1 else f'{compare} faster'})")
    if profile_out is not None:
        _write_trace(profile_out, profiles, console, top)
    if json_out is not None:
        doc = {"model": path.name, "target": compiled.target, "batch": batch, "runs": runs,
               "warmup": warmup, "compare": compare, "results": rows}
        write_bytes_atomic(json_out, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        click.echo(f"wrote {json_out}")


def _builder(path: Path, target: str | None, input_dims: Any):
    """thread count → CompiledModel, from an artifact folder or by compiling the model file."""
    from qir.runtime.artifacts import is_artifact

    if is_artifact(path):
        if input_dims:
            raise OptionError("--input-dim cannot change a compiled artifact's inputs",
                              hint="pass --input-dim to qirc compile instead")
        return lambda count: open_artifact(path, target, count)
    import qir

    graph = apply_input_dims(load_graph(path), input_dims)
    return lambda count: qir.compile(graph, target=target or "reference", num_threads=count)


def _table(rows: list[dict[str, Any]], target: str, runs: int, batch: int, compare: str | None):
    from rich.table import Table

    from qir.runtime.profiler import format_bytes

    table = Table(title=f"qir {target}: {runs} runs, batch {batch} (latency in ms)")
    columns = ["threads", "p50", "p95", "p99", "inf/s", "peak mem"]
    if compare:
        label = LABELS.get(compare, compare)
        columns += [f"{label} p50", f"{label}/qir"]
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        lat = row["qir"]["latency"]
        cells = [str(row["threads"]), f"{lat['p50_ms']:.3f}", f"{lat['p95_ms']:.3f}",
                 f"{lat['p99_ms']:.3f}", f"{lat['throughput_per_s']:.1f}",
                 format_bytes(row["qir"]["peak_memory_bytes"])]
        if compare:
            cells += [f"{row[compare]['p50_ms']:.3f}", f"{row['ratio']:.2f}"]
        table.add_row(*cells)
    return table


def _write_trace(path: Path, profiles: list, console, top: int) -> None:
    """One trace for all thread counts (one process each) and the slowest layers of each."""
    from qir.runtime.profiler import write_chrome_trace

    events = []
    for prof in profiles:
        events += prof.trace_events(pid=prof.num_threads)
        if prof.layers:
            console.print(prof.table(top))
        else:
            click.echo(f"no per-layer times: {prof.layer_source}")
    write_chrome_trace(path, events)
    click.echo(f"wrote {path} (open it in chrome://tracing or ui.perfetto.dev)")
