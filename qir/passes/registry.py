"""Passes and their registry.

A pass is a small class with a kebab-case ``name``, the lowest ``opt_level`` whose standard
pipeline includes it, what it ``needs`` (e.g. ``("shapes",)``), options as attrs fields, and
``run(graph, ctx) -> bool`` (whether it changed the graph). Register with the decorator;
third-party passes come in through the entry-point group ``qir.passes``::

    @register_pass
    @attrs.define
    class FuseEpilogue(Pass):
        \"\"\"Fuse bias, activation and residual add into the producing conv.\"\"\"
        name = "fuse-epilogue"
        opt_level = 2
        max_ops: int = 3          # set from a pipeline as fuse-epilogue{max-ops=3}

        def run(self, graph, ctx):
            ...

Two passes with one name are an error that names both.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from qir.errors import OptionError, QirError

if TYPE_CHECKING:
    from qir.ir.graph import Graph
    from qir.passes.manager import PassContext


class Pass:
    """Base of every pass. Subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str]
    opt_level: ClassVar[int] = 1
    needs: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: "Graph", ctx: "PassContext") -> bool:
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        """The first line of the pass's docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_PASSES: dict[str, type[Pass]] = {}
_entry_points_loaded = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise QirError(f"pass class {cls.__module__}.{cls.__qualname__} has no name")
    old = _PASSES.get(name)
    if old is not None and old is not cls:
        raise QirError(f"pass {name!r} registered twice: {_where(old)} and {_where(cls)}")
    _PASSES[name] = cls
    return cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_passes() -> None:
    global _entry_points_loaded
    import qir.passes.builtin  # noqa: F401  (registers the built-in passes)

    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group="qir.passes"):
            loaded = ep.load()
            for cls in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
                register_pass(cls)


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass, built-in and plugin, by name."""
    _load_passes()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class called ``name``; unknown names list close ones."""
    _load_passes()
    try:
        return _PASSES[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _PASSES, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "`qirc passes` lists them"
        raise OptionError(f"unknown pass {name!r}", hint=hint) from None


def make_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    """An instance of pass ``name`` with ``options`` (kebab-case keys allowed)."""
    import attrs

    cls = get_pass(name)
    options = {k.replace("-", "_"): v for k, v in (options or {}).items()}
    fields = {f.name: f for f in attrs.fields(cls)} if attrs.has(cls) else {}
    unknown = set(options) - set(fields)
    if unknown:
        raise OptionError(f"pass {name!r} has no option(s) {sorted(unknown)}; "
                          f"it takes {sorted(f.replace('_', '-') for f in fields) or 'none'}")
    try:
        return cls(**{k: _coerce(v, fields[k].type) for k, v in options.items()})
    except (TypeError, ValueError) as exc:
        raise OptionError(f"pass {name!r}: bad option value: {exc}") from None


def _coerce(value: Any, annotation: Any) -> Any:
    """Pipeline-string option values arrive as text; convert them to the field's type."""
    if not isinstance(value, str):
        return value
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if kind == "bool":
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{value!r} is not a boolean")
        return value.lower() in ("true", "1")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind.startswith(("tuple", "list")):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value
