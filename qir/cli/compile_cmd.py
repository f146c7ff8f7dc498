"""``qirc compile MODEL --target T [--quantize S --calib LIST] -o OUT``: write an artifact folder
(context binary, encodings, I/O specs, manifest and the graph; see qir.runtime.artifacts)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable

import click

from qir.cli.common import (apply_input_dims, calib_option, input_dim_option, load_graph,
                            model_argument, resolve_model)
from qir.errors import OptionError, TargetError

#: ``--quantize`` schemes (qir.compile's ``quantize=``; the presets of ``qirc quantize``).
QUANT_SCHEMES = ("int8", "a16w8", "fp16", "mixed")


def target_option(default: str | None = "reference") -> Callable:
    return click.option("--target", default=default, show_default=default is not None,
                        help="The target to compile for (reference, kryo, or a plugin's).")


def num_threads_option(command: Callable) -> Callable:
    return click.option("--num-threads", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Threads the compiled model may use.")(command)


def quantize_options(command: Callable) -> Callable:
    """``--quantize SCHEME`` and ``--calib DATA`` (QNN's ``--input_list`` spelling too)."""
    command = calib_option(command)
    return click.option(
        "--quantize", "scheme", type=click.Choice(QUANT_SCHEMES), default=None,
        help="Quantize over --calib: W8A8, 16-bit activations, float16 or automatic mixed "
             "precision (the model still takes and returns float).")(command)


def check_quantize(scheme: str | None, calib: Path | None) -> None:
    if scheme is None and calib is not None:
        raise click.UsageError("--calib is only used with --quantize")
    if scheme not in (None, "fp16") and calib is None:
        raise click.UsageError(f"--quantize {scheme} needs --calib (calibration data: an input "
                               "list, a folder or a .npz)")


def creator(model: Path, target: str, num_threads: int, opt_level: int, scheme: str | None,
            calib: Path | None, input_dims: tuple[tuple[str, str], ...], arch: str | None = None) -> str:
    """The command that built the artifact, for its manifest: file names but not folders, and
    no output path, so that the same build gives the same bytes wherever it is written."""
    words = ["qirc", "compile", model.name, "--target", target, "--num-threads", str(num_threads),
             "--opt-level", str(opt_level)]
    if scheme is not None:
        words += ["--quantize", scheme] + (["--calib", calib.name] if calib is not None else [])
    for name, dims in input_dims:
        words += ["--input-dim", name, dims]
    if arch is not None:
        words += ["--arch", arch]
    return " ".join(words)


def open_artifact(path: Path, target: str | None = None, num_threads: int | None = None):
    """The CompiledModel in artifact folder ``path``; ``target``, when given, must be the one it
    was compiled for (a compiled model does not change targets)."""
    import qir

    model = qir.load(path, num_threads=num_threads)
    if target is not None and target != model.target:
        raise OptionError(f"{path} was compiled for target {model.target!r}, not {target!r}",
                          hint=f"leave --target out, or recompile: qirc compile {path / 'model.qirb'} "
                               f"--target {target} -o NEW_FOLDER")
    return model


@click.command()
@model_argument
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The artifact folder to write (replaced atomically if it is one already).")
@target_option()
@num_threads_option
@click.option("--opt-level", "-O", type=click.IntRange(0, 3), default=3, show_default=True,
              help="Optimization level of the pass pipeline.")
@quantize_options
@input_dim_option
@click.option("--arch", type=click.Choice(["x86_64", "aarch64"]), default=None,
              help="Target kryo: the architecture of OUTPUT/model.so, a standalone library with the "
                   "C ABI of OUTPUT/model_abi.h (default: this machine's, written when the model "
                   "has static shapes and no fallback ops; --arch makes it required).")
def compile(model: Path | None, model_option: Path | None, output: Path, target: str,
            num_threads: int, opt_level: int, scheme: str | None, calib: Path | None,
            input_dims: Any, arch: str | None) -> None:
    """Compile MODEL for a target and write the artifact folder OUTPUT:

    \b
      context_binaries/<target>_context.bin   the compiled model
      quantization_config.json                encodings (quantized models)
      input_specs.json                        inputs/outputs: names, shapes, dtypes, quantization
      manifest.json                           versions, target, options, sha256 of every file
      model.qirb                              the compiled graph

    Run it with `qirc run OUTPUT` or `qir.load(OUTPUT)`.
    """
    import qir

    check_quantize(scheme, calib)
    if arch is not None and target != "kryo":
        raise click.UsageError("--arch builds a model library, which only --target kryo makes")
    path = resolve_model(model, model_option)
    graph = apply_input_dims(load_graph(path), input_dims)
    compiled = qir.compile(graph, target=target, num_threads=num_threads, opt_level=opt_level,
                           quantize=scheme, calibration=None if calib is None else str(calib),
                           progress=scheme is not None)
    created_by = creator(path, target, num_threads, opt_level, scheme, calib, input_dims, arch)
    if target == "kryo" and arch is None and platform.machine() in ("x86_64", "AMD64"):
        # The host library when the model allows one; the artifact without it otherwise.
        try:
            compiled.save(output, created_by=created_by, library_arch="x86_64")
        except TargetError as exc:
            click.echo(f"note: no model.so: {exc.message.splitlines()[0]}")
            compiled.save(output, created_by=created_by)
    else:
        compiled.save(output, created_by=created_by, library_arch=arch)
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    click.echo(f"wrote {output}/ ({target}, {len(compiled.graph.nodes)} nodes"
               + (f", {scheme}" if scheme else "") + f"): {', '.join(files)}")
