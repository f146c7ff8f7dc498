"""What to quantize and how: the options of ``qirc quantize`` and ``qir.compile(quantize=...)``.

The option names follow QNN's converter (activation / param / bias bitwidths, per-channel,
algorithm); ``Config.preset`` gives the named schemes of DESIGN.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from qir.errors import OptionError

ALGORITHMS = ("minmax", "ma_minmax", "percentile", "mse", "entropy")
"""Activation range algorithms: min-max, moving-average min-max, percentile, MSE-optimal, KL."""

PRECISIONS = ("int8", "int16", "float")
"""What a per-tensor / per-op override may ask for."""

SCHEMES = ("int", "fp16")
PRESETS = ("int8", "a16w8", "fp16", "mixed")


def _check_in(allowed):
    def check(instance, attribute, value):
        if value not in allowed:
            raise OptionError(f"quantization option {attribute.name}={value!r}: expected one of "
                              f"{', '.join(map(str, allowed))}")
    return check


def _check_overrides(instance, attribute, value):
    for key, precision in value.items():
        if precision not in PRECISIONS:
            raise OptionError(f"precision override {key!r}: {precision!r} is not one of "
                              f"{', '.join(PRECISIONS)}")


@attrs.frozen
class Config:
    """A quantization recipe.

    ``overrides`` maps a value name, a node name (its source-model name counts, through
    provenance) or an op name (``"nn.softmax"``) to ``"int8"``, ``"int16"`` or ``"float"``: the
    precision of that tensor, or of that node's outputs. ``encodings`` is a QNN/AIMET encodings
    file (path or parsed dict) whose entries fix the named tensors' quantization.
    ``target_sqnr_db`` is the output SQNR automatic mixed precision raises precision to reach
    (``mixed=True``).
    """

    scheme: str = attrs.field(default="int", validator=_check_in(SCHEMES))
    act_bitwidth: int = attrs.field(default=8, validator=_check_in((8, 16)))
    act_signed: bool = False
    param_bitwidth: int = attrs.field(default=8, validator=_check_in((4, 8, 16)))
    bias_bitwidth: int = attrs.field(default=32, validator=_check_in((32,)))
    per_channel: bool = True
    algorithm: str = attrs.field(default="minmax", validator=_check_in(ALGORITHMS))
    percentile: float = 99.99
    param_algorithm: str = attrs.field(default="minmax", validator=_check_in(("minmax", "mse")))
    overrides: Mapping[str, str] = attrs.field(factory=dict, converter=dict,
                                               validator=_check_overrides)
    encodings: Any = None
    cle: bool = False
    bias_correction: bool = False
    float_fallback: bool = True
    mixed: bool = False
    target_sqnr_db: float = 30.0

    @classmethod
    def preset(cls, name: str, **changes) -> "Config":
        """The named scheme: ``int8`` (W8A8), ``a16w8``, ``fp16`` or ``mixed`` (W8A8 raised to
        16-bit, then float, where needed to reach ``target_sqnr_db``)."""
        base = {"int8": {}, "a16w8": {"act_bitwidth": 16}, "fp16": {"scheme": "fp16"},
                "mixed": {"mixed": True}}
        if name not in base:
            raise OptionError(f"quantize={name!r}: expected one of {', '.join(PRESETS)} or a "
                              "qir.quant.Config")
        return cls(**{**base[name], **changes})

    @classmethod
    def of(cls, spec: Any) -> "Config":
        """A Config from a preset name or a Config."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls.preset(spec)
        raise OptionError(f"quantize={spec!r}: expected one of {', '.join(PRESETS)} or a "
                          "qir.quant.Config")

    def evolve(self, **changes) -> "Config":
        return attrs.evolve(self, **changes)
