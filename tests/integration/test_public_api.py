"""The public API: top-level names, cheap imports, one exception hierarchy, py.typed."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import dpface
import mechanisms
from dpface import errors

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "cv2", "onnxruntime", "insightface", "dlib")


def _loaded_after(code: str) -> list[str]:
    """Top-level packages of HEAVY that ``code`` imports, run in a fresh interpreter."""
    probe = (
        f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    loaded = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert isinstance(loaded, list)
    return loaded


# ---------------------------------------------------------------------- names
@pytest.mark.parametrize("package", [dpface, mechanisms], ids=lambda p: p.__name__)
def test_every_public_name_resolves(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert len(names) == len(set(names)), "duplicates in __all__"
    for name in names:
        assert getattr(package, name) is not None, name
        assert name in dir(package), name


def test_the_documented_names_are_public() -> None:
    for name in (
        "Anonymizer",
        "AnonymizeConfig",
        "AnonymizationResult",
        "FaceRecord",
        "Ledger",
        "TemplateStore",
        "BudgetExceeded",
        "BudgetChangeRefused",
        "DpfaceError",
        "UsageError",
        "InputError",
        "LedgerError",
        "NotALedgerError",
        "detect_file",
        "detect_array",
        "SurrogateGenerator",
        "write_report",
        "assets_dir",
    ):
        assert name in dpface.__all__, name
    for name in (
        "Laplace",
        "Gaussian",
        "Exponential",
        "IdentityLaplace",
        "IdentityGaussian",
        "IdentityVMF",
        "DPPixelization",
        "DPBlur",
        "PureDP",
        "ApproxDP",
        "ZCDP",
        "Mechanism",
        "Randomness",
        "poisson_amplify",
        "accounting",
    ):
        assert name in mechanisms.__all__, name


def test_top_level_names_are_the_module_objects() -> None:
    from dpface.ledger import Ledger
    from dpface.pipeline import Anonymizer
    from mechanisms.accounting import epsilon
    from mechanisms.identity import IdentityLaplace

    assert dpface.Anonymizer is Anonymizer and dpface.Ledger is Ledger
    assert mechanisms.IdentityLaplace is IdentityLaplace
    assert mechanisms.accounting.epsilon is epsilon
    assert isinstance(dpface.__version__, str) and dpface.__version__


def test_unknown_names_fail_as_usual() -> None:
    with pytest.raises(AttributeError):
        _ = dpface.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = mechanisms.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from dpface import no_such_name", {})


def test_star_imports_give_the_public_names() -> None:
    for package in ("dpface", "mechanisms"):
        namespace: dict[str, object] = {}
        exec(f"from {package} import *", namespace)
        assert set(importlib.import_module(package).__all__) <= set(namespace)


# ---------------------------------------------------------------------- cheap imports
def test_import_dpface_loads_no_model_runtime() -> None:
    assert _loaded_after("import dpface") == []


def test_light_names_stay_light() -> None:
    code = (
        "from dpface import AnonymizeConfig, Ledger, BudgetExceeded, DpfaceError, UsageError\n"
        "from dpface import TemplateStore, build_report\n"
        "from dpface.errors import ImageError, AssetError"
    )
    assert _loaded_after(code) == []


def test_heavy_names_load_on_use() -> None:
    assert "torch" in _loaded_after("from dpface import Anonymizer")


def test_the_core_never_imports_torch() -> None:
    code = "import mechanisms\nfor n in mechanisms.__all__: getattr(mechanisms, n)"
    loaded = _loaded_after(code)
    assert loaded == []


def test_import_mechanisms_is_light() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mechanisms, sys; print(sorted(m for m in ('numpy', 'scipy', "
            "'dp_accounting') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------- errors
def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every exception class defined in dpface/ and mechanisms/."""
    found = []
    for package in ("dpface", "mechanisms"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Exceeded", "Refused")) for b in bases):
                    found.append((module, node.name))
    return found


def test_one_base_class() -> None:
    assert dpface.DpfaceError is mechanisms.DpfaceError is errors.DpfaceError
    classes = _exception_classes()
    names = {name for _, name in classes}
    assert {"BudgetExceeded", "ImageError", "AssetError", "RecoveryError"} <= names
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, dpface.DpfaceError), f"{module}.{name}"


def test_every_error_is_exported_from_dpface_errors() -> None:
    for module, name in _exception_classes():
        if module.startswith("dpface."):
            assert name in errors.__all__, f"{module}.{name} is not in dpface.errors"
            assert getattr(errors, name) is getattr(importlib.import_module(module), name)


def test_builtin_bases_are_kept() -> None:
    assert issubclass(dpface.UsageError, ValueError)
    assert issubclass(dpface.InputError, ValueError)
    assert issubclass(dpface.ImageError, dpface.InputError)
    assert issubclass(dpface.ImageTooLarge, dpface.ImageError)
    assert issubclass(dpface.LedgerError, RuntimeError)
    assert issubclass(dpface.NotALedgerError, dpface.LedgerError)
    assert issubclass(dpface.BudgetExceeded, dpface.LedgerError)
    assert issubclass(dpface.BudgetChangeRefused, dpface.LedgerError)
    assert issubclass(dpface.AssetError, RuntimeError)
    assert issubclass(mechanisms.RecoveryError, ValueError)
    for cls in (
        mechanisms.TokenFormatError,
        mechanisms.AuthenticationError,
        mechanisms.ImageMismatchError,
    ):
        assert issubclass(cls, mechanisms.RecoveryError)


def _raises_dpface_error(fn: object) -> type[BaseException]:
    try:
        fn()  # type: ignore[operator]
    except dpface.DpfaceError as err:
        return type(err)
    raise AssertionError("no error raised")


def test_except_dpface_error_catches_what_dpface_raises(tmp_path: Path) -> None:
    from mechanisms.reversible import read_token_info

    text = tmp_path / "notes.txt"
    text.write_text("not a ledger\n")
    bad_photo = tmp_path / "broken.jpg"
    bad_photo.write_bytes(b"\xff\xd8 truncated")

    ledger = dpface.Ledger(":memory:", default_budget=mechanisms.PureDP(1.0))
    lap = mechanisms.Laplace(epsilon=0.75, sensitivity=1.0)

    def overspend() -> None:
        for _ in range(2):
            ledger.charge(
                "someone", mechanism="Laplace", budget=lap.guarantee.budget, event=lap.event()
            )

    cases = {
        dpface.UsageError: lambda: dpface.AnonymizeConfig(mechanism="dp-pix", epsilon=-1.0),
        dpface.NotALedgerError: lambda: dpface.Ledger(text),
        dpface.BudgetExceeded: overspend,
        dpface.ImageError: lambda: dpface.load_rgb(bad_photo),
        mechanisms.TokenFormatError: lambda: read_token_info(b"junk"),
    }
    for expected, fn in cases.items():
        assert issubclass(_raises_dpface_error(fn), expected), expected
    ledger.close()


# ---------------------------------------------------------------------- the CLI's exit codes
def _error(cls: type[BaseException]) -> BaseException:
    err = cls.__new__(cls)
    err.args = ("simulated failure",)
    return err


def _dpface_error_classes() -> list[type[BaseException]]:
    classes = [getattr(errors, name) for name in errors.__all__]
    return [*classes, mechanisms.RecoveryError, mechanisms.AuthenticationError]


@pytest.mark.parametrize("cls", _dpface_error_classes(), ids=lambda c: c.__name__)
def test_the_cli_maps_every_dpface_error_to_exit_2(
    cls: type[BaseException], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import dpface.report
    from dpface.cli import app

    path = tmp_path / "ledger.db"
    dpface.Ledger(path).close()

    def failing(*args: object, **kwargs: object) -> None:
        raise _error(cls)

    monkeypatch.setattr(dpface.report, "write_report", failing)
    res = CliRunner().invoke(app, ["report", str(path), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2, res.output
    assert "simulated failure" in res.output and "this is a bug" not in res.output


def test_the_cli_maps_a_real_not_a_ledger_to_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dpface.cli import app

    text = tmp_path / "notes.txt"
    text.write_text("not a ledger\n")
    res = CliRunner().invoke(app, ["ledger", "verify", str(text)])
    assert res.exit_code == 2, res.output
    assert text.read_text() == "not a ledger\n"


# ---------------------------------------------------------------------- packaging
def test_py_typed_markers_ship() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data = config["tool"]["setuptools"]["package-data"]
    for package in ("dpface", "mechanisms"):
        assert (ROOT / package / "py.typed").is_file(), package
        assert "py.typed" in package_data[package], package
