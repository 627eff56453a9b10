"""Face-agnostic differential-privacy core: budgets, secure samplers, mechanisms, accounting.

Depends on numpy/scipy (and pure-Python accounting libraries) only; never imports torch.
"""

from .budgets import ZCDP, ApproxDP, Budget, PureDP, compose_basic
from .rng import Randomness

__all__ = ["ZCDP", "ApproxDP", "Budget", "PureDP", "Randomness", "compose_basic"]
