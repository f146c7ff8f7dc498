"""``qirc quantize MODEL --calib LIST|DIR -o OUT``: calibrate and quantize (QNN's converter
quantization flags are accepted as aliases)."""

from __future__ import annotations

from pathlib import Path

import click

from qir.cli.common import (AliasedOption, apply_input_dims, calib_option, input_dim_option,
                            load_graph, model_argument, resolve_model)
from qir.cli.convert_cmd import WRITERS, output_format
from qir.errors import OptionError

#: ``--algorithms`` names (QNN's ``--apply_algorithms``) and the Config fields they set.
PTQ_ALGORITHMS = {"cle": "cle", "cross_layer_equalization": "cle", "bc": "bias_correction",
                  "bias_correction": "bias_correction"}


def _precision(pairs: tuple[str, ...]) -> dict[str, str]:
    overrides = {}
    for item in pairs:
        name, sep, precision = item.rpartition("=")
        if not sep or not name:
            raise OptionError(f"--precision {item}: expected NAME=int8|int16|float",
                              hint="NAME is a tensor, node or op name, e.g. --precision nn.softmax=float")
        overrides[name] = precision
    return overrides


@click.command()
@model_argument
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The quantized model (.qir or .qirb); quantization_config.json goes beside it.")
@calib_option
@click.option("--preset", type=click.Choice(["int8", "a16w8", "fp16", "mixed"]), default="int8",
              show_default=True, help="Scheme: W8A8, 16-bit activations, float16, or automatic mixed precision.")
@click.option("--act-bitwidth", cls=AliasedOption, aliases=("--act_bitwidth", "--act_bw"),
              type=click.Choice(["8", "16"]), default=None, help="Activation bits (default: the preset's).")
@click.option("--weight-bitwidth", cls=AliasedOption,
              aliases=("--param-bitwidth", "--weights_bitwidth", "--param_bitwidth", "--weight_bw"),
              type=click.Choice(["4", "8", "16"]), default="8", show_default=True, help="Weight bits.")
@click.option("--bias-bitwidth", cls=AliasedOption, aliases=("--bias_bitwidth", "--bias_bw"),
              type=click.Choice(["32"]), default="32", show_default=True, help="Bias bits.")
@click.option("--per-channel/--per-tensor", cls=AliasedOption, aliases=("--use_per_channel_quantization",),
              default=True, show_default=True, help="Per-output-channel weight scales.")
@click.option("--algorithm", cls=AliasedOption, aliases=("--act_quantizer_calibration",),
              type=click.Choice(["minmax", "ma_minmax", "percentile", "mse", "entropy"]),
              default="minmax", show_default=True, help="Activation range algorithm.")
@click.option("--percentile", type=float, default=99.99, show_default=True,
              help="The percentile of --algorithm percentile.")
@click.option("--overrides", cls=AliasedOption, aliases=("--quantization_overrides",),
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="QNN/AIMET encodings JSON fixing some (or all) tensors' quantization.")
@click.option("--algorithms", cls=AliasedOption, aliases=("--apply_algorithms",), default="",
              help="PTQ algorithms, comma separated: cle (cross-layer equalization), bc (bias correction).")
@click.option("--cle", is_flag=True, help="Cross-layer equalization (same as --algorithms cle).")
@click.option("--bias-correction", is_flag=True, help="Bias correction (same as --algorithms bc).")
@click.option("--precision", "precisions", multiple=True, metavar="NAME=PRECISION",
              help="Keep a tensor, node or op in int8, int16 or float (repeatable).")
@click.option("--target-sqnr", type=float, default=30.0, show_default=True,
              help="Output SQNR (dB) that --preset mixed raises precision to reach.")
@click.option("--debug-accuracy", is_flag=True,
              help="Compare float and quantized tensors on the calibration set; print the worst.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the --debug-accuracy report as JSON.")
@click.option("--export-qdq", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the quantized model as QDQ ONNX (runs in onnxruntime).")
@input_dim_option
def quantize(model, model_option, output, calib, preset, act_bitwidth, weight_bitwidth,
             bias_bitwidth, per_channel, algorithm, percentile, overrides, algorithms, cle,
             bias_correction, precisions, target_sqnr, debug_accuracy, report, export_qdq,
             input_dims) -> None:
    """Quantize MODEL over a calibration set and write the quantized model.

    The float model is optimized (-O3) first; ops without an integer kernel stay float between
    quantize/dequantize nodes, and the summary lists them.
    """
    from qir.passes import run as run_passes
    from qir.passes.quantize import Config, calibrate_graph, dump_encodings

    if calib is None and preset != "fp16":
        raise click.UsageError("missing --calib (calibration data: an input list, a folder or a .npz)")
    fmt = output_format(output)
    if fmt == "onnx":
        raise OptionError("write the quantized model as .qir or .qirb; use --export-qdq for ONNX")
    flags = {PTQ_ALGORITHMS.get(a.strip()) for a in algorithms.split(",") if a.strip()}
    if None in flags:
        raise OptionError(f"--algorithms {algorithms}: expected a comma-separated list of cle, bc")
    changes = dict(param_bitwidth=int(weight_bitwidth), bias_bitwidth=int(bias_bitwidth),
                   per_channel=per_channel, algorithm=algorithm, percentile=percentile,
                   encodings=str(overrides) if overrides else None,
                   cle=cle or "cle" in flags, bias_correction=bias_correction or "bias_correction" in flags,
                   overrides=_precision(precisions), target_sqnr_db=target_sqnr)
    if act_bitwidth is not None:
        changes["act_bitwidth"] = int(act_bitwidth)
    config = Config.preset(preset, **changes)
    graph = run_passes(apply_input_dims(load_graph(resolve_model(model, model_option)), input_dims),
                       opt_level=3)
    if config.scheme == "fp16":
        from qir.passes.quantize import quantize as quantize_graph

        result = quantize_graph(graph, config)
    else:
        calibrated = calibrate_graph(graph.copy(), config, str(calib), progress=True)
        if config.mixed:
            from qir.passes.quantize.debugger import auto_mixed_precision

            mixed = auto_mixed_precision(calibrated, target_sqnr_db=config.target_sqnr_db)
            result = mixed.result
            chosen = ", ".join(f"{k}={v}" for k, v in mixed.chosen.items()) or "nothing"
            click.echo(f"mixed precision: raised {chosen} "
                       f"({'target met' if mixed.met else 'target NOT met'})")
        else:
            result = calibrated.lower()
        if debug_accuracy:
            _debug_accuracy(calibrated, result, report)
    WRITERS[fmt](result.graph, output)
    encodings = output.with_name("quantization_config.json")
    if config.scheme != "fp16":
        dump_encodings(result.graph, encodings)
    if export_qdq is not None:
        from qir.cli.common import write_bytes_atomic
        from qir.passes.quantize.qdq import export_qdq_onnx

        write_bytes_atomic(export_qdq, export_qdq_onnx(result.graph, None).SerializeToString())
    left = ", ".join(f"{op} ×{n}" for op, n in sorted(result.float_ops.items())) or "none"
    click.echo(f"wrote {output} ({preset}, {len(result.graph.nodes)} nodes; float ops: {left})"
               + (f" and {encodings.name}" if config.scheme != "fp16" else ""))


def _debug_accuracy(calibrated, result, report_path: Path | None) -> None:
    from rich.console import Console

    from qir.passes.quantize.debugger import debug_accuracy

    report = debug_accuracy(calibrated, result)
    Console().print(report.table())
    suggestion = report.suggestions()
    if suggestion:
        click.echo("suggested: " + " ".join(f"--precision {k}={v}" for k, v in suggestion.items()))
    if report_path is not None:
        report.save(report_path)
