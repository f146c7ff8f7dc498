"""Graph passes: the registry, the pass manager, rewrite patterns and the built-in passes.

    g = qir.passes.run(g, "canonicalize,fold-constants,dce")    # or opt_level=0..3
    g = qir.passes.run(g, opt_level=3, ctx=PassContext(verify_each=True, dump_dir="dumps"))
"""

from qir.passes.manager import (DumpIR, Instrument, PassContext, PassManager, PrintIR, TimePasses,
                                VerifyEach, format_pass, format_pipeline, parse_pipeline,
                                register_provider, resolve_pipeline)
from qir.passes.pipelines import missing_passes, standard_pipeline
from qir.passes.registry import Pass, all_passes, get_pass, make_pass, register_pass

__all__ = ["DumpIR", "Instrument", "Pass", "PassContext", "PassManager", "PrintIR", "TimePasses",
           "VerifyEach", "all_passes", "format_pass", "format_pipeline", "get_pass", "make_pass",
           "missing_passes", "parse_pipeline", "register_pass", "register_provider",
           "resolve_pipeline", "run", "standard_pipeline"]


def run(graph, pipeline=None, *, opt_level: int | None = None, ctx: PassContext | None = None):
    """Run ``pipeline`` (or the standard pipeline of ``opt_level``, default 2) on ``graph`` in
    place; returns it. ``ctx`` brings options and instruments; ``opt_level`` overrides its level."""
    import attrs

    if ctx is None:
        ctx = PassContext(opt_level=2 if opt_level is None else opt_level)
    elif opt_level is not None:
        ctx = attrs.evolve(ctx, opt_level=opt_level)
    spec = pipeline if pipeline is not None else standard_pipeline(ctx.opt_level)
    return PassManager(resolve_pipeline(spec, ctx.options), ctx).run(graph)
