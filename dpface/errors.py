"""One exception hierarchy for the face library: catch :class:`DpfaceError` to catch them all.

Each class says what the caller can do about it:

* :class:`UsageError` -- the caller asked for something impossible (bad option, bad name, an
  output folder inside an input folder...). Nothing was read, charged or written.
* :class:`LedgerError` -- the ledger cannot be used as asked (not a dpface ledger, tampered,
  an explicit budget change refused...). :class:`BudgetExceeded` is the ordinary refusal of a
  release that would overspend; it is recorded in the ledger and the face is masked instead.
* :class:`InputError` -- one input (a photo) cannot be processed; a batch lists it and goes on.
"""

from __future__ import annotations

__all__ = ["DpfaceError", "InputError", "LedgerError", "NotALedgerError", "UsageError"]


class DpfaceError(Exception):
    """Base class of every error dpface raises on purpose."""


class UsageError(DpfaceError, ValueError):
    """The request cannot be honoured as given (checked before any work is done)."""


class InputError(DpfaceError, ValueError):
    """One input cannot be processed; the rest of a batch is not affected."""


class LedgerError(DpfaceError, RuntimeError):
    """The ledger cannot be used as asked."""


class NotALedgerError(LedgerError):
    """The file is not a dpface ledger (or is empty where a ledger was expected); untouched."""
