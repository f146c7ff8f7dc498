"""Graph passes: the registry, the pass manager, rewrite patterns and the built-in passes.

    g = qir.passes.run(g, "canonicalize,fold-constants,dce")    # or opt_level=0..3
"""

from qir.passes.manager import PassContext, PassManager, parse_pipeline, resolve_pipeline
from qir.passes.registry import Pass, all_passes, get_pass, make_pass, register_pass

__all__ = ["Pass", "PassContext", "PassManager", "all_passes", "get_pass", "make_pass",
           "parse_pipeline", "register_pass", "resolve_pipeline", "run"]


def run(graph, pipeline=None, *, opt_level: int | None = None, ctx: PassContext | None = None):
    """Run ``pipeline`` (or the standard pipeline of ``opt_level``) on ``graph`` in place; returns it."""
    from qir.passes.pipelines import standard_pipeline

    ctx = ctx or PassContext(opt_level=2 if opt_level is None else opt_level)
    spec = pipeline if pipeline is not None else standard_pipeline(ctx.opt_level)
    return PassManager(resolve_pipeline(spec), ctx).run(graph)
