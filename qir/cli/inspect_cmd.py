"""``qirc inspect MODEL``: ops histogram, parameters, MACs/FLOPs per op type and in total, I/O specs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qir.cli.common import (format_type, human, human_bytes, input_dim_option, load_graph,
                            model_argument, apply_input_dims, resolve_model)


@click.command()
@model_argument
@input_dim_option
@click.option("--nodes", "per_node", is_flag=True, help="Also list every node's MACs and FLOPs.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def inspect(model: Path | None, model_option: Path | None, input_dims, per_node: bool,
            as_json: bool) -> None:
    """Show what MODEL computes and what it costs.

    Symbolic dims (such as a batch dim N) count as 1, i.e. costs are per sample, unless
    fixed with --input-dim.
    """
    from qir.ir.stats import model_stats

    path = resolve_model(model, model_option)
    graph = apply_input_dims(load_graph(path), input_dims)
    stats = model_stats(graph)
    if as_json:
        click.echo(json.dumps(stats_dict(stats, path), indent=2))
    else:
        print_stats(stats, path, per_node)


def stats_dict(stats, path: Path) -> dict:
    """The statistics as plain JSON data."""
    return {
        "model": str(path),
        "graph": stats.name,
        "nodes": len(stats.nodes),
        "params": stats.num_params,
        "param_bytes": stats.param_bytes,
        "macs": stats.total_macs,
        "flops": stats.total_flops,
        "unknown_nodes": stats.unknown_nodes,
        "assumed_symbols": {s: 1 for s in stats.assumed_symbols},
        "ops": {op: {"count": c, "macs": m, "flops": f} for op, (c, m, f) in stats.by_op().items()},
        "inputs": [{"name": s.name, "type": format_type(s.type)} for s in stats.inputs],
        "outputs": [{"name": s.name, "type": format_type(s.type)} for s in stats.outputs],
    }


def print_stats(stats, path: Path, per_node: bool) -> None:
    """Rich tables: summary, inputs/outputs, ops (most MACs first), optionally nodes."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=click.get_text_stream("stdout"), width=100, soft_wrap=True,
                      highlight=False)
    console.print(f"[bold]{path}[/bold]  graph @{stats.name}: {len(stats.nodes)} nodes, "
                  f"{len(stats.op_counts)} op types")
    console.print(f"parameters: {stats.num_params:,} ({human_bytes(stats.param_bytes)})")
    per = f" per {', '.join(f'{s}=1' for s in stats.assumed_symbols)}" if stats.assumed_symbols else ""
    console.print(f"MACs: {human(stats.total_macs)} ({stats.total_macs:,})   "
                  f"FLOPs: {human(stats.total_flops)} ({stats.total_flops:,}){per}")
    if stats.unknown_nodes:
        console.print(f"[yellow]{stats.unknown_nodes} node(s) have unknown shapes and are not "
                      f"counted (fix input dims with --input-dim)[/yellow]")

    io = Table(title="inputs and outputs", title_justify="left")
    io.add_column("kind")
    io.add_column("name")
    io.add_column("type")
    for kind, specs in (("input", stats.inputs), ("output", stats.outputs)):
        for spec in specs:
            io.add_row(kind, spec.name, format_type(spec.type))
    console.print(io)

    ops = Table(title="ops", title_justify="left")
    for name, justify in (("op", "left"), ("count", "right"), ("MACs", "right"),
                          ("FLOPs", "right"), ("% MACs", "right")):
        ops.add_column(name, justify=justify)
    total = stats.total_macs or 1
    rows = sorted(stats.by_op().items(), key=lambda kv: (-(kv[1][1] or 0), -kv[1][0], kv[0]))
    for op, (count, macs, flops) in rows:
        share = "" if not macs else f"{100 * macs / total:.1f}"
        ops.add_row(op, str(count), human(macs), human(flops), share)
    ops.add_row("[bold]total[/bold]", str(len(stats.nodes)), human(stats.total_macs),
                human(stats.total_flops), "100.0" if stats.total_macs else "")
    console.print(ops)

    if per_node:
        nodes = Table(title="nodes", title_justify="left")
        for name, justify in (("node", "left"), ("op", "left"), ("MACs", "right"), ("FLOPs", "right")):
            nodes.add_column(name, justify=justify)
        for n in stats.nodes:
            nodes.add_row(n.name, n.op, human(n.macs), human(n.flops))
        console.print(nodes)
