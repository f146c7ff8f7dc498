"""The ``qirc`` entry point: global options, sub-command registry and error reporting.

Exit codes: 0 success, 1 a user error (a QirError or an OS error such as a missing file, printed
as ``qirc: error: ...`` plus an optional hint line), 2 a usage error (bad option or argument),
3 an internal error (a bug in qir). A traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

import qir
from qir.errors import QirError

#: Sub-commands: name → "module:function" (imported when used, so `qirc --help` stays fast).
COMMANDS = {
    "inspect": "qir.cli.inspect_cmd:inspect",
    "convert": "qir.cli.convert_cmd:convert",
    "run": "qir.cli.run_cmd:run",
    "opt": "qir.cli.opt_cmd:opt",
    "passes": "qir.cli.passes_cmd:passes",
    "quantize": "qir.cli.quantize_cmd:quantize",
    "compile": "qir.cli.compile_cmd:compile",
    "bench": "qir.cli.bench_cmd:bench",
}

LOG_LEVELS = ("debug", "info", "warning", "error")
EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 1, 3


class QircGroup(click.Group):
    """A group whose sub-commands load lazily and whose errors print in one or two lines."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # every error reaches the user as one or two lines
            if ctx.params.get("debug"):
                raise
            report_error(exc)
            ctx.exit(EXIT_INTERNAL_ERROR if _is_internal(exc) else EXIT_USER_ERROR)


def _is_internal(exc: BaseException) -> bool:
    return not isinstance(exc, (QirError, OSError))


def report_error(exc: BaseException) -> None:
    """Print ``exc`` for a user: what went wrong and, when known, what to do."""
    if isinstance(exc, QirError):
        message, hint = exc.message, exc.hint
    elif isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        message, hint = f"{exc.strerror or exc}{where}", None
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
        hint = "this is a bug in qir; rerun with --debug for the traceback and report it"
    click.echo(f"qirc: error: {message}", err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)


@click.group(cls=QircGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(qir.__version__, "--version", "-V", prog_name="qirc",
                      message="%(prog)s %(version)s")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="warning",
              show_default=True, help="How much qir logs to stderr.")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, log_level: str, debug: bool) -> None:
    """qirc: inspect, convert and run neural networks with qir.

    MODEL is a .onnx file or qir's own .qir (text) / .qirb (binary) form.
    """
    level = logging.DEBUG if debug else getattr(logging, log_level.upper())
    logging.basicConfig(level=level, format="qirc: %(levelname)s: %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    ctx.ensure_object(dict)["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``qirc``)."""
    cli.main(args=argv, prog_name="qirc")


if __name__ == "__main__":
    main()
