"""Inputs and outputs beyond a local folder: fsspec URLs, WebDataset tar shards, Parquet tables.

:meth:`dpface.AnonymizeConfig.run` (and ``dpface anonymize``) accept, besides local files and
folders:

* **fsspec URLs** -- ``memory://photos/``, ``s3://bucket/photos/``, ``gs://...``,
  ``file:///...``: a folder (every file under it, recursively) or one file. ``s3://`` and
  ``gs://`` work once the filesystem is installed (``pip install s3fs`` / ``gcsfs``).
* **WebDataset tar shards** (``*.tar``, local or a URL): every image member (``KEY.jpg``,
  ``KEY.png``...) is one input named by its member path; the other members (``KEY.json``,
  ``KEY.txt``, ``KEY.cls``: captions, labels, often names) are never read into the outputs.
* **Parquet tables** (``*.parquet``, local or a URL) with an image column: each row is one
  input named ``<row key>.<image type>`` (the key column if the table has one of
  ``__key__``, ``key``, ``id``, ``image_id``, ``file_name``, ``path``; else the row number).
  The image column is the ``image_column`` (default: the first column holding bytes, or
  structs with a ``bytes`` field as Hugging Face datasets write them). No other column is
  read into the outputs.

Inputs are copied ("staged") into a private temporary folder (under ``$DPFACE_STAGING`` if set:
with ``--engine dask --address`` on other machines, a folder every worker sees) -- a shard or a
table becomes a folder of its name without the suffix, so outputs mirror the input layout
exactly as for folders (``OUT/shard-000/KEY.png``; one input: directly under ``OUT``) -- and
removed after the run. An ``OUT`` given as a URL is written locally first and uploaded while the
run goes on (every few seconds and at the end: outputs and receipts before the manifest entries
that record them, so a resumed job never skips an input whose output is not uploaded); with
``resume`` the remote ``OUT`` is first downloaded. A receipts table (``receipts_table=True``,
``--receipts-table``) is written as ``OUT/receipts.parquet``: one row per output (its path and
its receipt as JSON), besides the receipt files.

Nothing identifying is written beside the outputs: receipts name an input by its path inside
the shard, table or folder (or by a keyed digest with ``names="hash"``), never by the URL or
the staging folder, and problems in the summary name the original URL or shard.

Needs ``fsspec`` and, for Parquet, ``pyarrow`` (``pip install 'dpface[distributed]'``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .batch import BatchSummary, Progress
    from .config import AnonymizeConfig

__all__ = [
    "KEY_COLUMNS",
    "RECEIPTS_TABLE",
    "is_url",
    "needs_staging",
    "run",
    "write_receipts_table",
]

KEY_COLUMNS = ("__key__", "key", "id", "image_id", "file_name", "path")
RECEIPTS_TABLE = "receipts.parquet"
SHARD_SUFFIXES = (".tar",)
TABLE_SUFFIXES = (".parquet", ".pq")
SYNC_SECONDS = 5.0  # how often a remote OUT is brought up to date during a run
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"RIFF", ".webp"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def is_url(value: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (any fsspec protocol but a Windows drive)."""
    text = os.fspath(value)
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


def _kind(value: str | os.PathLike[str]) -> str:
    name = PurePosixPath(os.fspath(value).rstrip("/")).name.lower()
    if name.endswith(SHARD_SUFFIXES):
        return "shard"
    if name.endswith(TABLE_SUFFIXES):
        return "table"
    return "url" if is_url(value) else "local"


def needs_staging(
    inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], receipts_table: bool
) -> bool:
    """True when an input or the output is not a plain local file or folder."""
    return receipts_table or is_url(out) or any(_kind(i) != "local" for i in inputs)


def _fs(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as err:
        raise UsageError(f"{url}: URLs need fsspec: pip install 'dpface[distributed]'") from err
    try:
        return fsspec.core.url_to_fs(url)  # type: ignore[no-any-return]
    except (ImportError, ValueError) as err:
        protocol = url.partition("://")[0]
        raise UsageError(
            f"{url}: no filesystem for {protocol}:// is installed ({err}); for s3:// pip "
            "install s3fs, for gs:// pip install gcsfs"
        ) from err


def _open(source: str) -> Any:
    """A binary file object for a local path or a URL."""
    if is_url(source):
        fs, path = _fs(source)
        try:
            return fs.open(path, "rb")
        except FileNotFoundError as err:
            raise UsageError(f"no such file: {source}") from err
    try:
        return open(source, "rb")
    except FileNotFoundError as err:
        raise UsageError(f"no such file: {source}") from err


def _safe_rel(name: str) -> str | None:
    """A member or key as a relative posix path inside the staged folder (None if unsafe)."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


@dataclass
class _Staged:
    """Where each original input went, to name problems by the original."""

    root: Path
    inputs: list[Path] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # staged folder/file -> original
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (original, why)


def _unique(root: Path, base: str) -> Path:
    cand, n = root / base, 1
    while cand.exists():
        n += 1
        cand = root / f"{base}-{n}"
    return cand


def _stage_url(source: str, st: _Staged) -> None:
    fs, path = _fs(source)
    name = PurePosixPath(path.rstrip("/")).name or "input"
    if not fs.exists(path):
        raise UsageError(f"no such file or folder: {source}")
    if fs.isdir(path):
        dest = _unique(st.root, name)
        dest.mkdir()
        base = path.rstrip("/")
        for remote in sorted(fs.find(path)):
            rel = _safe_rel(str(remote)[len(base) :].lstrip("/"))
            if rel is None:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open(remote, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    else:
        dest = _unique(st.root, name)
        with fs.open(path, "rb") as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
    st.inputs.append(dest)
    st.names[str(dest)] = source


def _stage_shard(source: str, st: _Staged) -> None:
    """A WebDataset shard: its image members under a folder named after the shard."""
    from .batch import IMAGE_SUFFIXES

    name = PurePosixPath(source.rstrip("/")).name
    dest = _unique(st.root, name[: -len(".tar")] if name.lower().endswith(".tar") else name)
    dest.mkdir()
    with _open(source) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r|*") as tar:  # streamed: no seeking
                for member in tar:
                    if not member.isfile():
                        continue
                    rel = _safe_rel(member.name)
                    if rel is None or PurePosixPath(rel).suffix.lower() not in IMAGE_SUFFIXES:
                        continue  # captions, labels, metadata: never copied
                    data = tar.extractfile(member)
                    if data is None:
                        continue
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as dst:
                        shutil.copyfileobj(data, dst)
        except tarfile.TarError as err:
            st.skipped.append((source, f"not a readable tar shard ({err}); what was read "
                               "before the damage is processed"))  # fmt: skip
    st.inputs.append(dest)
    st.names[str(dest)] = source


def _suffix(data: bytes) -> str:
    for magic, suffix in _IMAGE_MAGIC:
        if data.startswith(magic):
            return suffix
    return ".jpg"  # unknown bytes: the reader reports them as unreadable, per row


def _stage_table(source: str, st: _Staged, column: str | None) -> None:
    """A Parquet table: one file per row from its image column, named by its key column."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise UsageError(
            f"{source}: Parquet tables need pyarrow: pip install 'dpface[distributed]'"
        ) from err
    name = PurePosixPath(source.rstrip("/")).name
    stem = name.rsplit(".", 1)[0]
    dest = _unique(st.root, stem)
    dest.mkdir()
    with _open(source) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as err:  # pyarrow raises its own error types
            raise UsageError(f"{source}: not a readable Parquet table ({err})") from err
        schema = pf.schema_arrow
        image = column or _image_column(schema)
        if image is None or image not in schema.names:
            raise UsageError(
                f"{source}: no image column"
                + (f" named {column!r}" if column else " (a binary column, or structs with a "
                   "'bytes' field)")
                + f"; its columns: {', '.join(schema.names)}"
            )  # fmt: skip
        key = next((k for k in KEY_COLUMNS if k in schema.names and k != image), None)
        row = 0
        used: set[str] = set()
        for batch in pf.iter_batches(columns=[image] + ([key] if key else [])):
            images = batch.column(0).to_pylist()
            keys = batch.column(1).to_pylist() if key else [None] * len(images)
            for value, k in zip(images, keys, strict=True):
                data = value.get("bytes") if isinstance(value, dict) else value
                label = _safe_rel(str(k)) if k is not None else None
                label = PurePosixPath(label).stem if label else f"{row:08d}"
                if label.casefold() in used:
                    label = f"{label}-{row:08d}"
                used.add(label.casefold())
                row += 1
                if not isinstance(data, (bytes, bytearray)) or not data:
                    st.skipped.append((f"{source}, row {row - 1}", "no image bytes: skipped"))
                    continue
                (dest / f"{label}{_suffix(bytes(data))}").write_bytes(bytes(data))
    st.inputs.append(dest)
    st.names[str(dest)] = source


def _image_column(schema: Any) -> str | None:
    import pyarrow as pa

    for f in schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            return str(f.name)
        if pa.types.is_struct(f.type) and any(sub.name == "bytes" for sub in f.type):
            return str(f.name)
    return None


def _stage(inputs: Sequence[str | os.PathLike[str]], root: Path, column: str | None) -> _Staged:
    st = _Staged(root)
    for given in inputs:
        text = os.fspath(given)
        kind = _kind(text)
        if kind == "local":
            st.inputs.append(Path(text))
        elif kind == "shard":
            _stage_shard(text, st)
        elif kind == "table":
            _stage_table(text, st, column)
        else:
            _stage_url(text, st)
    return st


class _Upload:
    """Brings a remote OUT up to date with the local one: outputs and receipts first, then
    the manifest entries (a done-file only after the files it records)."""

    def __init__(self, local: Path, url: str) -> None:
        self.local, self.url = local, url.rstrip("/")
        self.fs, self.base = _fs(self.url)
        self.sent: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()
        self.last = 0.0

    def _changed(self, paths: list[Path]) -> list[Path]:
        out = []
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            key = p.relative_to(self.local).as_posix()
            if self.sent.get(key) != (st.st_size, st.st_mtime_ns):
                out.append(p)
        return out

    def sync(self) -> None:
        from .manifest import JOB_DIR

        with self.lock:
            job = self.local / JOB_DIR
            # the manifest is listed FIRST: every done-file seen has its output on disk
            manifest = sorted(p for p in job.rglob("*") if p.is_file() and ".tmp" not in p.name)
            files = sorted(
                p
                for p in self.local.rglob("*")
                if p.is_file() and JOB_DIR not in p.relative_to(self.local).parts
                and not p.name.endswith(".tmp")
            )  # fmt: skip
            for p in [*self._changed(files), *self._changed(manifest)]:
                rel = p.relative_to(self.local).as_posix()
                st = p.stat()
                self.fs.makedirs(posixpath.dirname(f"{self.base}/{rel}"), exist_ok=True)
                self.fs.put_file(str(p), f"{self.base}/{rel}")
                self.sent[rel] = (st.st_size, st.st_mtime_ns)
            self.last = time.monotonic()

    def maybe(self) -> None:
        if time.monotonic() - self.last >= SYNC_SECONDS:
            self.sync()

    def download(self) -> None:
        """Copy the remote OUT here (to resume its job)."""
        if not self.fs.exists(self.base):
            return
        for remote in self.fs.find(self.base):
            rel = _safe_rel(str(remote)[len(self.base.rstrip("/")) :].lstrip("/"))
            if rel is None:
                continue
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(target))
            st = target.stat()
            self.sent[rel] = (st.st_size, st.st_mtime_ns)


def write_receipts_table(out: Path) -> Path:
    """``OUT/receipts.parquet``: one row per receipt under ``out`` (output path, receipt path,
    faces, and the receipt as JSON text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .batch import RECEIPT_SUFFIX, write_atomic

    rows: dict[str, list[Any]] = {"output": [], "receipt": [], "faces": [], "json": []}
    for path in sorted(out.rglob(f"*{RECEIPT_SUFFIX}")):
        if any(part.startswith(".") for part in path.relative_to(out).parts):
            continue
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        rows["output"].append(data.get("output"))
        rows["receipt"].append(path.relative_to(out).as_posix())
        rows["faces"].append(len(data.get("faces") or []))
        rows["json"].append(text)
    buf = io.BytesIO()
    pq.write_table(pa.table(rows), buf)
    target = out / RECEIPTS_TABLE
    write_atomic(target, buf.getvalue())
    return target


def _rename(summary: BatchSummary, st: _Staged, out_shown: str) -> BatchSummary:
    """Problems and the output named by the originals, not by the staging folders."""
    from .batch import Problem

    def original(text: str) -> str:
        for staged, source in sorted(st.names.items(), key=lambda kv: -len(kv[0])):
            joint = (
                f"{source}:" if _kind(source) in ("shard", "table") else f"{source.rstrip('/')}/"
            )
            text = text.replace(staged + os.sep, joint).replace(staged, source)
        return text.replace(str(st.root) + os.sep, "").replace(str(st.root), "<staging>")

    problems = [Problem(original(p.input), original(p.reason)) for p in summary.problems]
    problems += [Problem(src, why) for src, why in st.skipped]
    report = summary.report
    if report is not None and is_url(out_shown):
        report = f"{out_shown.rstrip('/')}/{Path(report).relative_to(summary.output).as_posix()}"
    return replace(
        summary,
        problems=problems,
        output=out_shown if is_url(out_shown) else Path(out_shown),
        report=report,
    )


STAGING_ENV = "DPFACE_STAGING"  # where inputs are staged (a folder every worker sees)


@contextlib.contextmanager
def _tempdir(prefix: str) -> Iterator[Path]:
    """A private temporary folder under ``$DPFACE_STAGING`` (default: the system's)."""
    where = os.environ.get(STAGING_ENV) or None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(
    config: AnonymizeConfig,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    receipts_table: bool = False,
    image_column: str | None = None,
    progress: Progress | None = None,
    runner: Callable[..., BatchSummary],
    **kwargs: Any,
) -> BatchSummary:
    """Stage the inputs, run ``runner(local inputs, local out, progress=..., **kwargs)`` (the
    configuration's own run), keep a remote OUT up to date, write the receipts table."""
    out_text = os.fspath(out)
    remote = is_url(out_text)
    with _tempdir("dpface-stage-") as root:
        staging_in = root / "in"
        staging_in.mkdir()
        st = _stage(inputs, staging_in, image_column)
        local_out = root / "out" if remote else Path(out_text)
        upload = _Upload(local_out, out_text) if remote else None
        if upload is not None:
            local_out.mkdir()
            if config.resume:
                upload.download()

        def tell(done: int, total: int, name: str) -> None:
            if upload is not None:
                with contextlib.suppress(OSError):
                    upload.maybe()
            if progress is not None:
                progress(done, total, name)

        summary = runner(st.inputs, local_out, progress=tell, **kwargs)
        if receipts_table:
            write_receipts_table(local_out)
        if upload is not None:
            upload.sync()
        return _rename(summary, st, out_text)
