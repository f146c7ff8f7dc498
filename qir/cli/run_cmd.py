"""``qirc run MODEL --input NAME=FILE.npy ...``: run a model through qir and save its outputs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import click
import numpy as np

from qir.cli.common import (format_type, load_graph, model_argument, resolve_model,
                            write_bytes_atomic)
from qir.cli.compile_cmd import open_artifact
from qir.errors import InputError, OptionError
from qir.runtime.artifacts import is_artifact

_DEFAULT = click.core.ParameterSource.DEFAULT


@click.command()
@model_argument
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="An input array from a .npy file (repeatable); NAME= may be left out "
                   "when the model has one input.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each output to OUTPUT_DIR/<name>.npy.")
@click.option("--target", default="reference", show_default=True, help="The target to run on.")
@click.option("--num-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads the target may use.")
def run(model: Path | None, model_option: Path | None, inputs: tuple[str, ...],
        output_dir: Path | None, target: str, num_threads: int) -> None:
    """Run MODEL (a model file or a `qirc compile` folder) on inputs from .npy files; print each
    output's shape and a summary."""
    import qir

    path = resolve_model(model, model_option)
    if is_artifact(path):  # a `qirc compile` folder: its target and threads unless told otherwise
        given = click.get_current_context().get_parameter_source
        compiled = open_artifact(path, target if given("target") != _DEFAULT else None,
                                 num_threads if given("num_threads") != _DEFAULT else None)
        feeds = read_feeds(inputs, [s.name for s in compiled.inputs])
    else:
        graph = load_graph(path)
        feeds = read_feeds(inputs, [v.name for v in graph.inputs])
        compiled = qir.compile(graph, target=target, num_threads=num_threads)
    outputs = compiled.run(feeds)
    for spec in compiled.outputs:
        click.echo(summarize(spec.name, outputs[spec.name], format_type(spec.type)))
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, value in outputs.items():
            target_path = output_dir / f"{safe_filename(name)}.npy"
            write_bytes_atomic(target_path, npy_bytes(name, value))
        click.echo(f"wrote {len(outputs)} output(s) to {output_dir}/")


def read_feeds(specs: tuple[str, ...], names: list[str]) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` pairs → {name: array}; a bare FILE names the model's only input."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            if len(names) != 1:
                raise OptionError(f"--input {spec}: give it as NAME=FILE.npy",
                                  hint=f"the model's inputs are: {', '.join(names)}")
            name, file = names[0], spec
        if name in feeds:
            raise OptionError(f"--input {name} given twice")
        feeds[name] = load_npy(Path(file), name)
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"no --input for {', '.join(missing)}",
                         hint=f"pass --input {missing[0]}=FILE.npy for each input")
    return feeds


def load_npy(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"--input {name}: no such file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"--input {name}: {path} is not a readable .npy file ({exc})") from None


def summarize(name: str, value, declared: str) -> str:
    """One line per output: name, dtype and shape, and min/max/mean of numeric arrays."""
    if value is None or isinstance(value, list):
        kind = "empty optional" if value is None else f"sequence of {len(value)}"
        return f"{name}: {kind} ({declared})"
    array = np.asarray(value)
    head = f"{name}: {array.dtype}{list(array.shape)}"
    if array.size and array.dtype.kind in "biuf":
        data = array.astype(np.float64)
        head += f"  min {data.min():.6g}  max {data.max():.6g}  mean {data.mean():.6g}"
    return head


def safe_filename(name: str) -> str:
    """An output name as a file name (ONNX names may hold '/' or ':')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "output"


def npy_bytes(name: str, value) -> bytes:
    if value is None or isinstance(value, list):
        raise OptionError(f"output {name!r} is not a tensor and cannot be saved as .npy")
    buf = io.BytesIO()
    np.save(buf, np.asarray(value), allow_pickle=False)
    return buf.getvalue()
