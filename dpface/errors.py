"""One exception hierarchy for dpface: catch :class:`DpfaceError` to catch them all.

Each class says what the caller can do about it:

* :class:`UsageError` -- the caller asked for something impossible (bad option, bad name, an
  output folder inside an input folder...). Nothing was read, charged or written.
* :class:`LedgerError` -- the ledger cannot be used as asked (:class:`NotALedgerError`: not a
  dpface ledger, left untouched; tampered; :class:`BudgetChangeRefused`: an explicit budget
  change refused...). :class:`BudgetExceeded` is the ordinary refusal of a release that would
  overspend; it is recorded in the ledger and the face is masked instead.
* :class:`InputError` -- one input (a photo) cannot be processed; a batch lists it and goes on.
  :class:`ImageError` (unreadable, truncated, unsupported) and :class:`ImageTooLarge` (more
  pixels than allowed, nothing decoded) are the photo reader's.
* :class:`AssetError` -- a model or sample file is missing or altered: run ``./dev setup``.

:class:`DpfaceError` is defined in :mod:`mechanisms.errors` and re-exported here, so the DP
core's own errors (the reversible pseudonymiser's ``RecoveryError`` family) are covered too.
Each subclass also keeps the builtin base callers may already catch: ``UsageError``,
``InputError`` (and so ``ImageError``) and ``RecoveryError`` subclass ``ValueError``;
``LedgerError`` and ``AssetError`` subclass ``RuntimeError``. A mechanism's constructor refuses
an invalid parameter with a plain ``ValueError``/``TypeError`` (the core's convention);
:class:`dpface.AnonymizeConfig` turns those into :class:`UsageError`. Some argument checks
inside the library (``Anonymizer``'s and the generators' constructors...) still raise a plain
``ValueError``/``TypeError``.

The classes raised by heavier modules (:mod:`dpface.ledger`, :mod:`dpface.models.images`,
:mod:`dpface.models.store`) live there and are loaded from here on first use, so importing
this module stays free of numpy, SQLite and PIL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mechanisms.errors import DpfaceError

if TYPE_CHECKING:
    from .ledger import BudgetChangeRefused, BudgetExceeded
    from .models.images import ImageError, ImageTooLarge
    from .models.store import AssetError

__all__ = [
    "AssetError",
    "BudgetChangeRefused",
    "BudgetExceeded",
    "DpfaceError",
    "ImageError",
    "ImageTooLarge",
    "InputError",
    "LedgerError",
    "NotALedgerError",
    "UsageError",
]


class UsageError(DpfaceError, ValueError):
    """The request cannot be honoured as given (checked before any work is done)."""


class InputError(DpfaceError, ValueError):
    """One input cannot be processed; the rest of a batch is not affected."""


class LedgerError(DpfaceError, RuntimeError):
    """The ledger cannot be used as asked."""


class NotALedgerError(LedgerError):
    """The file is not a dpface ledger (or is empty where a ledger was expected); untouched."""


_ELSEWHERE = {
    "BudgetExceeded": "dpface.ledger",
    "BudgetChangeRefused": "dpface.ledger",
    "ImageError": "dpface.models.images",
    "ImageTooLarge": "dpface.models.images",
    "AssetError": "dpface.models.store",
}


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
