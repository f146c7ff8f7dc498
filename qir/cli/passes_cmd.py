"""``qirc passes``: the registered passes, built-in and from plugins."""

from __future__ import annotations

import json

import click


def pass_origin(cls: type) -> str:
    """'built-in' for qir's own passes, else the distribution that installed the pass's module
    (a plugin, through the ``qir.passes`` entry points), else the module's name."""
    module = cls.__module__
    if module == "qir" or module.startswith("qir."):
        return "built-in"
    from importlib.metadata import packages_distributions

    dists = packages_distributions().get(module.split(".")[0])
    return dists[0] if dists else module


def standard_levels() -> dict[str, int]:
    """Pass name → the lowest -O level whose standard pipeline runs it."""
    from qir.passes.pipelines import LEVELS, expected_pipeline

    levels: dict[str, int] = {}
    for level in sorted(LEVELS):
        for name in expected_pipeline(level):
            levels.setdefault(name, level)
    return levels


def _options(cls: type) -> str:
    import attrs

    if not attrs.has(cls):
        return ""
    parts = []
    for f in attrs.fields(cls):
        default = "" if f.default is attrs.NOTHING or isinstance(f.default, attrs.Factory) \
            else f"={_show(f.default)}"
        parts.append(f"{f.name.replace('_', '-')}{default}")
    return ", ".join(parts)


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def summary(cls: type) -> str:
    """The docstring's first sentence, even when it wraps over several lines."""
    import re

    paragraph = (cls.__doc__ or "").strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    match = re.match(r"(.+?[.])(\s|$)", text)
    return match.group(1) if match else text


def pass_rows() -> list[dict]:
    """One dict per registered pass: name, level, pipeline level, needs, options, description, origin."""
    from qir.passes.registry import all_passes

    levels = standard_levels()
    return [{"name": name, "opt_level": cls.opt_level, "in_pipeline": levels.get(name),
             "needs": list(cls.needs), "options": _options(cls), "description": summary(cls),
             "origin": pass_origin(cls)} for name, cls in all_passes().items()]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def passes(as_json: bool) -> None:
    """List the registered passes: built-in ones and those plugins add (entry points `qir.passes`).

    "-O" is the pass's opt level; "std" marks passes in the standard -O1..-O3 pipelines.
    """
    rows = pass_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(rows)} registered passes", title_justify="left")
    for name in ("pass", "-O", "std", "options", "description", "origin"):
        table.add_column(name, justify="right" if name == "-O" else "left")
    for row in rows:
        std = "" if row["in_pipeline"] is None else f"O{row['in_pipeline']}+"
        table.add_row(*(escape(cell) for cell in (row["name"], str(row["opt_level"]), std,
                                                  row["options"], row["description"], row["origin"])))
    Console(file=click.get_text_stream("stdout"), width=140, highlight=False,
            soft_wrap=True).print(table)
