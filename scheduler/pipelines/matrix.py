"""A step's ``matrix``: the cartesian product of its lists, one step per variant.

Variables are taken in name order, so a variant's key does not change when the file lists them
in another order: ``test`` with ``{python: [3.11, 3.12], os: [linux]}`` makes
``test[os=linux,python=3.11]`` and ``test[os=linux,python=3.12]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

__all__ = ["Variant", "expand", "variant_count", "variant_key"]

Variant = tuple[tuple[str, str], ...]
"""One variant: (name, value) pairs in name order."""


def variant_count(matrix: Mapping[str, Sequence[str]]) -> int:
    """How many steps ``matrix`` makes, without making them (limits are checked first)."""
    return math.prod(len(values) for values in matrix.values())


def expand(matrix: Mapping[str, Sequence[str]]) -> list[Variant]:
    """Every variant, in a fixed order (names sorted, values in the order written).

    An empty matrix is the one variant with no values: a step without a matrix.
    """
    names = sorted(matrix)
    return [
        tuple(zip(names, values, strict=True))
        for values in itertools.product(*(matrix[name] for name in names))
    ]


def variant_key(name: str, variant: Variant) -> str:
    """The key of one variant's step: the step's key with its values in brackets."""
    if not variant:
        return name
    return f"{name}[{','.join(f'{k}={v}' for k, v in variant)}]"
