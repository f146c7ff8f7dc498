"""``qirc convert MODEL -o OUT``: ONNX or qir in, qir text (.qir), qir binary (.qirb) or ONNX out."""

from __future__ import annotations

from pathlib import Path

import click

from qir.cli.common import (apply_input_dims, format_type, input_dim_option,
                            load_graph, model_argument, resolve_model, write_bytes_atomic)
from qir.errors import OptionError, QirError

#: Output format → its file suffix and writer.
FORMATS = {"qir": ".qir", "qirb": ".qirb", "onnx": ".onnx"}


@click.command()
@model_argument
@click.option("-o", "--output", "output", required=True, metavar="OUT",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (.qir text, .qirb binary or .onnx).")
@input_dim_option
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default=None,
              help="Output format (default: from the suffix of OUT).")
def convert(model: Path | None, model_option: Path | None, output: Path, input_dims,
            fmt: str | None) -> None:
    """Convert MODEL to qir's text or binary form, or to ONNX.

    The text form (.qir) is what humans read and golden tests compare; large weights go to a
    sidecar file next to it. The write is atomic: OUT is complete or untouched.
    """
    path = resolve_model(model, model_option)
    fmt = fmt or output_format(output)
    graph = apply_input_dims(load_graph(path), input_dims)
    from qir.ir.verifier import verify

    verify(graph)
    WRITERS[fmt](graph, output)
    ins = ", ".join(f"{v.name}: {format_type(v.type)}" for v in graph.inputs)
    outs = ", ".join(f"{v.name}: {format_type(v.type)}" for v in graph.outputs)
    click.echo(f"wrote {output} ({fmt}, {len(graph.nodes)} nodes)  ({ins}) -> ({outs})")


def output_format(output: Path) -> str:
    """The format named by OUT's suffix."""
    for fmt, suffix in FORMATS.items():
        if output.suffix == suffix:
            return fmt
    raise OptionError(f"cannot tell the output format from {output.name!r}",
                      hint="name it .qir, .qirb or .onnx, or pass --format")


def write_qir_text(graph, output: Path) -> None:
    """qir text, with large weights in ``<OUT>.weights.npz`` (qir.ir.serialize, atomic)."""
    from qir.ir import serialize

    if output.suffix != ".qir":
        raise OptionError(f"{output.name}: a qir text file must end in .qir",
                          hint="its weights go beside it, in <name>.qir.weights.npz")
    serialize.save(graph, output)


def write_qir_binary(graph, output: Path) -> None:
    """qir binary: one file holding the graph and its weights."""
    from qir.ir import serialize

    write_bytes_atomic(output, serialize.dumps(graph))


def write_onnx(graph, output: Path) -> None:
    try:
        from qir.frontends.onnx.exporter import export_onnx
    except ImportError as exc:
        raise QirError(f"ONNX export is not available in this qir ({exc})",
                       hint="convert to .qir or .qirb instead") from None
    proto = export_onnx(graph)
    write_bytes_atomic(output, proto.SerializeToString())


WRITERS = {"qir": write_qir_text, "qirb": write_qir_binary, "onnx": write_onnx}
