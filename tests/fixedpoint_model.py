"""An independent model of qir's requantization rule (docs/quantization.md) on Python big
integers, for tests."""


def big_int_rule(a: int, m: int, shift: int) -> int:
    """The rule, step by step, on unbounded Python ints (floor division = arithmetic shift)."""
    a = a * 2 ** max(-shift, 0)
    t = (a * m + 2 ** 30) // 2 ** 31
    right = max(shift, 0)
    return (t + (2 ** (right - 1) if right else 0)) // 2 ** right
