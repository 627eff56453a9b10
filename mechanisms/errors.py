"""The root of the dpface distribution's exception hierarchy: :class:`DpfaceError`.

The class is defined here, in the face-agnostic core, so that the core's own errors (the
reversible pseudonymiser's :class:`~mechanisms.reversible.RecoveryError` family) can derive from
it without importing the face library; ``dpface.errors`` re-exports this very class. One
``except DpfaceError`` therefore catches every error either package raises on purpose.

Not covered, on purpose: a mechanism's constructor or call refuses an invalid *parameter*
(epsilon, delta, sensitivity, dimension, a wrongly shaped input...) with a plain
:class:`ValueError` or :class:`TypeError`, as numpy and scipy do; this module stays free of
everything but the standard library.
"""

from __future__ import annotations

__all__ = ["DpfaceError"]


class DpfaceError(Exception):
    """Base class of every error that ``dpface`` and ``mechanisms`` raise on purpose.

    Subclasses also derive from the builtin exception callers already catch where that
    applies (``ValueError`` for a bad request or input, ``RuntimeError`` for a state
    problem), so ``except ValueError`` keeps working.
    """
