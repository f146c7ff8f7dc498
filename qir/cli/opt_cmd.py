"""``qirc opt MODEL (-O0..-O3 | --passes "a,b{k=v}") -o OUT``: run passes on a model."""

from __future__ import annotations

import time
from pathlib import Path

import click

from qir.cli.common import apply_input_dims, input_dim_option, load_graph, model_argument, resolve_model
from qir.cli.convert_cmd import FORMATS, WRITERS, output_format
from qir.errors import OptionError


def _names(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma lists: ('a,b', 'c') → ['a', 'b', 'c']."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _check_names(option: str, names: list[str], allow_all: bool = False) -> None:
    """Every name must be a registered pass (or 'all'), else an error suggesting close names."""
    from qir.passes.registry import get_pass

    for name in names:
        if allow_all and name == "all":
            continue
        try:
            get_pass(name)
        except OptionError as exc:
            raise OptionError(f"{option} {name}: {exc.message}", hint=exc.hint) from None


def _verify_result(graph, verified_each: bool) -> None:
    """The optimized graph must be valid before it is written (a pass bug otherwise)."""
    from qir.errors import VerificationError
    from qir.ir.verifier import verify

    try:
        verify(graph)
    except VerificationError as exc:
        hint = None if verified_each else "rerun with --verify-each to find the pass that broke it"
        raise VerificationError(f"the optimized graph is invalid: {exc.message}", hint=hint) from exc


@click.command()
@model_argument
@click.option("-O", "--opt-level", "opt_level", type=click.IntRange(0, 3), default=None, metavar="N",
              help="Run the standard pipeline of level N: -O0 (nothing) .. -O3 (default -O2 "
                   "without --passes).")
@click.option("--passes", "passes", default=None, metavar="PIPELINE",
              help='Run these passes instead, e.g. "canonicalize,fuse-epilogue{max-ops=3},dce".')
@click.option("-o", "--output", "output", default=None, metavar="OUT",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (.qir text, .qirb binary or .onnx); without it nothing is written.")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default=None,
              help="Output format (default: from the suffix of OUT).")
@input_dim_option
@click.option("--disable-pass", "disabled", multiple=True, metavar="NAME",
              help="Skip pass NAME wherever the pipeline has it (repeatable).")
@click.option("--time-passes", is_flag=True, help="Print a table of time and node counts per pass.")
@click.option("--print-before", multiple=True, metavar="NAME",
              help="Print the IR before pass NAME ('all': before every pass; repeatable).")
@click.option("--print-after", multiple=True, metavar="NAME",
              help="Print the IR after pass NAME ('all': after every pass; repeatable).")
@click.option("--verify-each", is_flag=True, help="Verify the IR after every pass.")
@click.option("--dump-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Save the IR after every pass as DIR/NN-<pass>.qir.")
def opt(model: Path | None, model_option: Path | None, opt_level: int | None, passes: str | None,
        output: Path | None, fmt: str | None, input_dims, disabled: tuple[str, ...],
        time_passes: bool, print_before: tuple[str, ...], print_after: tuple[str, ...],
        verify_each: bool, dump_dir: Path | None) -> None:
    """Optimize MODEL with a standard pipeline (-O0..-O3) or the passes you name.

    A pass that fails leaves a reproducer (the IR before it and the command that reruns it) in
    --dump-dir, or in a temporary folder, and the error names both. `qirc passes` lists passes.
    """
    from qir.passes.manager import PassContext, PassManager, PrintIR, TimePasses, resolve_pipeline
    from qir.passes.pipelines import standard_pipeline

    path = resolve_model(model, model_option)
    if output is not None:
        fmt = fmt or output_format(output)
    elif fmt is not None:
        raise click.UsageError("--format needs -o OUT")
    disabled_names = _names(disabled)
    _check_names("--disable-pass", disabled_names)
    before, after = _names(print_before), _names(print_after)
    _check_names("--print-before", before, allow_all=True)
    _check_names("--print-after", after, allow_all=True)

    level = 2 if opt_level is None else opt_level
    pipeline = resolve_pipeline(passes if passes is not None else standard_pipeline(level))
    timing = TimePasses() if time_passes else None
    instruments = [i for i in (timing,) if i is not None]
    if before or after:
        instruments.append(PrintIR(before=before, after=after, stream=click.get_text_stream("stdout")))
    ctx = PassContext(opt_level=level, disabled=disabled_names, verify_each=verify_each,
                      instruments=instruments, dump_dir=dump_dir)

    graph = apply_input_dims(load_graph(path), input_dims)
    nodes_before = len(graph.nodes)
    start = time.perf_counter()
    try:
        PassManager(pipeline, ctx).run(graph)
    finally:  # on a failure too: the table shows how far the pipeline got
        if timing is not None:
            timing.print(click.get_text_stream("stdout"))
    elapsed = time.perf_counter() - start
    _verify_result(graph, verify_each)
    ran = sum(p.name not in ctx.disabled for p in pipeline)
    summary = f"{ran} pass(es) in {elapsed * 1e3:.1f} ms, {nodes_before} -> {len(graph.nodes)} nodes"
    if output is not None:
        WRITERS[fmt](graph, output)
        click.echo(f"wrote {output} ({fmt}): {summary}")
    else:
        click.echo(f"ran {summary}; nothing written (no -o)")
