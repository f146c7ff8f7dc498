"""The QirError hierarchy: one message a user can act on, naming the node or file at fault.

Every layer may import this module. ``qirc`` prints a QirError in one or two lines and exits
non-zero; anything else escaping is a bug in qir, shown with a traceback.
"""

from __future__ import annotations


class QirError(Exception):
    """Base of every error a user can cause and fix (bad file, op, shape or option)."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ModelLoadError(QirError):
    """A model file or object could not be read (corrupt bytes, missing data, bad path)."""


class UnsupportedOpError(QirError):
    """One or more ops of a model are not supported; all of them are listed at once."""


class VerificationError(QirError):
    """The IR breaks an invariant (types, use-def lists, acyclicity, op rules)."""


class IRParseError(QirError):
    """Textual IR could not be parsed; the message gives line and column."""


class ShapeInferenceError(QirError):
    """An op's types or shapes cannot be inferred from its inputs and attributes."""


class InputError(QirError):
    """Inputs given at run time do not match the model's inputs (names, dtypes, shapes)."""


class OptionError(QirError):
    """An unknown or invalid option was given to the API or to ``qirc``."""


class ExecutionError(QirError):
    """An op failed while running (e.g. an index out of range in a Gather)."""


class TargetError(QirError):
    """A target cannot compile or load a graph (unknown target, bad context binary)."""


class PassError(QirError):
    """A pass failed or left an invalid graph; names the pass and, when written, its reproducer."""

    def __init__(self, message: str, *, hint: str | None = None, pass_name: str | None = None,
                 reproducer: str | None = None, command: str | None = None):
        super().__init__(message, hint=hint)
        self.pass_name, self.reproducer, self.command = pass_name, reproducer, command
