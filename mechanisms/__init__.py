"""Face-agnostic differential-privacy core: budgets, secure samplers, mechanisms, accounting.

Depends on numpy/scipy (and pure-Python accounting libraries) only; never imports torch.

The public names are importable from the package itself:

    from mechanisms import Laplace, Gaussian, IdentityLaplace, DPPixelization, PureDP

The budgets and :class:`DpfaceError` (standard library only) are loaded with the package;
every other name is loaded from its module on first use (the mechanisms pull in numpy, scipy
and dp-accounting, about a second), so ``import mechanisms`` stays cheap. The submodules stay
importable as before (``mechanisms.laplace``, ``mechanisms.accounting``...);
``accounting``, ``metrics`` (input metrics and distances) and ``registry`` (the named
mechanisms) are public submodules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .budgets import ZCDP, ApproxDP, Budget, PureDP, compose_basic
from .errors import DpfaceError

if TYPE_CHECKING:
    from . import accounting as accounting
    from . import metrics as metrics
    from . import registry as registry
    from .attributes import KAnonymousVoting, TClosenessSelector
    from .audit import AuditResult, audit_mechanism
    from .base import Guarantee, Mechanism
    from .exponential import Exponential
    from .gaussian import Gaussian
    from .identity import IdentityGaussian, IdentityLaplace, IdentityVMF
    from .laplace import Laplace
    from .pixelization import DPBlur, DPPixelization
    from .reversible import (
        AuthenticationError,
        ImageMismatchError,
        RecoveryError,
        ReversiblePseudonymizer,
        TokenFormatError,
    )
    from .rng import Randomness
    from .subsampling import PoissonSubsample, poisson_amplify

# name -> module it is loaded from (relative to this package); "" marks a submodule
_LAZY = {
    "accounting": "",
    "registry": "",
    "metrics": "",
    "Randomness": "rng",
    "Mechanism": "base",
    "Guarantee": "base",
    "Laplace": "laplace",
    "Gaussian": "gaussian",
    "Exponential": "exponential",
    "IdentityLaplace": "identity",
    "IdentityGaussian": "identity",
    "IdentityVMF": "identity",
    "DPPixelization": "pixelization",
    "DPBlur": "pixelization",
    "PoissonSubsample": "subsampling",
    "poisson_amplify": "subsampling",
    "KAnonymousVoting": "attributes",
    "TClosenessSelector": "attributes",
    "AuditResult": "audit",
    "audit_mechanism": "audit",
    "ReversiblePseudonymizer": "reversible",
    "RecoveryError": "reversible",
    "TokenFormatError": "reversible",
    "AuthenticationError": "reversible",
    "ImageMismatchError": "reversible",
}

__all__ = [
    "ZCDP",
    "ApproxDP",
    "AuditResult",
    "AuthenticationError",
    "Budget",
    "DPBlur",
    "DPPixelization",
    "DpfaceError",
    "Exponential",
    "Gaussian",
    "Guarantee",
    "IdentityGaussian",
    "IdentityLaplace",
    "IdentityVMF",
    "ImageMismatchError",
    "KAnonymousVoting",
    "Laplace",
    "Mechanism",
    "PoissonSubsample",
    "PureDP",
    "Randomness",
    "RecoveryError",
    "ReversiblePseudonymizer",
    "TClosenessSelector",
    "TokenFormatError",
    "accounting",
    "audit_mechanism",
    "compose_basic",
    "metrics",
    "poisson_amplify",
    "registry",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = importlib.import_module(f".{module or name}", __name__)
    value = loaded if not module else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
