"""dpface: de-identify faces in photos with formal, tested differential-privacy guarantees.

The public names are importable from the package itself:

    from dpface import Anonymizer, AnonymizeConfig, Ledger, SurrogateGenerator, BudgetExceeded
    from mechanisms import IdentityLaplace, PureDP      # the face-agnostic DP core

Importing ``dpface`` is cheap: the exception classes are loaded with it, and every other name
is loaded from its module on first use, so torch, OpenCV and onnxruntime are imported only
when a name that needs them (``Anonymizer``, ``detect_file``, ``SurrogateGenerator``...) is
used. The submodules (``dpface.pipeline``, ``dpface.ledger``...) stay importable as before;
names not listed in ``__all__`` are internal and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import DpfaceError, InputError, LedgerError, NotALedgerError, UsageError

if TYPE_CHECKING:
    from .batch import BatchSummary, Problem
    from .config import DETECTORS, MECHANISMS, AnonymizeConfig
    from .detect import ImageFaces, detect_array, detect_file
    from .face import Face
    from .generators.base import Generator
    from .generators.onnx_swap import OnnxFaceSwapGenerator
    from .generators.surrogate import SurrogateGenerator
    from .ledger import BudgetChangeRefused, BudgetExceeded, Ledger, default_ledger_path
    from .linking import TemplateStore
    from .models.images import ImageError, ImageTooLarge, load_rgb
    from .models.store import AssetError, assets_dir
    from .pipeline import RECEIPT_SCHEMA, AnonymizationResult, Anonymizer, FaceRecord
    from .report import REPORT_SCHEMA, build_report, render_html, write_report
    from .steering import AttributeSteering, TClosenessSteering, VotingSteering

    __version__: str

# name -> module it is loaded from (relative to this package)
_LAZY = {
    # anonymising
    "Anonymizer": "pipeline",
    "AnonymizationResult": "pipeline",
    "FaceRecord": "pipeline",
    "RECEIPT_SCHEMA": "pipeline",
    "AnonymizeConfig": "config",
    "MECHANISMS": "config",
    "DETECTORS": "config",
    "BatchSummary": "batch",
    "Problem": "batch",
    # budgets and linking
    "Ledger": "ledger",
    "BudgetExceeded": "ledger",
    "BudgetChangeRefused": "ledger",
    "default_ledger_path": "ledger",
    "TemplateStore": "linking",
    # detection, photos, model files
    "detect_file": "detect",
    "detect_array": "detect",
    "Face": "face",
    "ImageFaces": "detect",
    "load_rgb": "models.images",
    "ImageError": "models.images",
    "ImageTooLarge": "models.images",
    "assets_dir": "models.store",
    "AssetError": "models.store",
    # generators and attribute steering
    "Generator": "generators.base",
    "SurrogateGenerator": "generators.surrogate",
    "OnnxFaceSwapGenerator": "generators.onnx_swap",
    "AttributeSteering": "steering",
    "VotingSteering": "steering",
    "TClosenessSteering": "steering",
    # reports
    "build_report": "report",
    "render_html": "report",
    "write_report": "report",
    "REPORT_SCHEMA": "report",
}

__all__ = [
    "DETECTORS",
    "MECHANISMS",
    "RECEIPT_SCHEMA",
    "REPORT_SCHEMA",
    "AnonymizationResult",
    "AnonymizeConfig",
    "Anonymizer",
    "AssetError",
    "AttributeSteering",
    "BatchSummary",
    "BudgetChangeRefused",
    "BudgetExceeded",
    "DpfaceError",
    "Face",
    "FaceRecord",
    "Generator",
    "ImageError",
    "ImageFaces",
    "ImageTooLarge",
    "InputError",
    "Ledger",
    "LedgerError",
    "NotALedgerError",
    "OnnxFaceSwapGenerator",
    "Problem",
    "SurrogateGenerator",
    "TClosenessSteering",
    "TemplateStore",
    "UsageError",
    "VotingSteering",
    "__version__",
    "assets_dir",
    "build_report",
    "default_ledger_path",
    "detect_array",
    "detect_file",
    "load_rgb",
    "render_html",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the one constant (dpface/_version.py, also the metadata's)
        value: Any = importlib.import_module("._version", __name__).__version__
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
