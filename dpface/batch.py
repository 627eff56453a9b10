"""Batches of photos: plan the outputs safely, anonymise each photo, write PNGs and receipts.

The command line and Python users share this module::

    from dpface import batch
    from dpface.config import AnonymizeConfig

    config = AnonymizeConfig(mechanism="dp-pix", epsilon=2.0)
    planned = batch.plan(["photos/"], "out/anon")       # refuses unsafe output folders
    anonymizer = config.build_anonymizer()
    summary = batch.run(anonymizer, planned)             # never stops at one bad photo
    print(summary.as_dict())

(:meth:`dpface.config.AnonymizeConfig.run` does these steps in the safe order.)

**Where outputs go.** :func:`plan` mirrors the input tree under the output folder, so two
inputs never share an output: one folder input is mirrored directly under OUT; with several
inputs each goes under ``OUT/<its basename>`` (repeated basenames get ``-2``, ``-3``... in
command-line order). An output is the input's relative path with its suffix replaced by
``.png``; where two inputs would then meet (``x.jpg`` and ``x.png``, also when they differ only
in case), every member of that group keeps its suffix (``x.jpg.png``, ``x.png.png``). An output
folder that is, lies inside, or contains an input folder is refused, and so is an input file
that is itself a planned output, before anything is read or charged. With ``names="hash"``
outputs and receipts are named by keyed digests of the relative path (the ledger's secret), so
file names leak nothing, and receipts do not carry the original name.

**Each photo** is read (after its header is checked against the pixel cap), anonymised
(charged in the ledger before any noise is drawn), written as a PNG without metadata
(atomically: a crash never leaves half a file) with ``NAME.receipt.json`` beside it. A problem
with one photo (unreadable, too large, no face found, a failed write...) is listed in the
summary and the batch goes on. The report written into the output folder covers this run only.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import inspect
import io
import json
import math
import os
import sys
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from . import manifest
from .errors import UsageError
from .video import VIDEO_SUFFIXES, is_video

if TYPE_CHECKING:
    from .ledger import Ledger
    from .linking import TemplateStore
    from .pipeline import Anonymizer

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchSummary",
    "Plan",
    "PlannedImage",
    "Problem",
    "Progress",
    "SubjectMap",
    "WorkerPool",
    "check_subject",
    "default_workers",
    "plan",
    "prepare_output",
    "read_subject_map",
    "refuse_in_worker",
    "run",
    "usable_cores",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
HASH_CHARS = 16  # hex characters of a hashed output name (64 bits)
PNG_COMPRESS_LEVEL = 1  # measured: 79 ms vs 272 ms per photo at PIL's default level 6
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
RECEIPT_SUFFIX = ".receipt.json"
NamesPolicy = Literal["keep", "hash"]
Progress = Callable[[int, int, str], None]
"""Called as ``progress(done, total, name)`` before each photo and once at the end."""


@dataclass(frozen=True)
class Problem:
    """One thing the caller should know about one input (the batch went on)."""

    input: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"input": self.input, "reason": self.reason}


@dataclass(frozen=True)
class PlannedImage:
    """One photo of a batch and where its output goes.

    ``source``: the file to read (as given, joined with its path inside a folder input).
    ``rel``: its path in the output tree before the suffix changes (posix).
    ``keys``: the names a subject map may use for it. ``output``: the PNG's path relative to
    the output folder (None until hashed names are resolved). ``name``: what the receipt calls
    the input (``rel``, or the digest with ``names="hash"``).
    """

    source: Path
    rel: str
    keys: tuple[str, ...]
    output: str | None = None
    name: str | None = None

    @property
    def receipt(self) -> str | None:
        """The receipt's path relative to the output folder."""
        if self.output is None:
            return None
        if is_video(self.source):  # a video keeps its suffix: clip.mp4.receipt.json
            return self.output + RECEIPT_SUFFIX
        return self.output[: -len(".png")] + RECEIPT_SUFFIX


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided: every photo with its output, and the inputs it skipped."""

    out: Path
    images: tuple[PlannedImage, ...]
    problems: tuple[Problem, ...]
    names: NamesPolicy
    input_files: frozenset[str] = field(default=frozenset(), repr=False)  # resolved, for checks
    roots: tuple[str, ...] = field(default=(), repr=False)  # resolved input folders

    @property
    def resolved(self) -> bool:
        """True when every image has its output name (hashed names need the ledger's key)."""
        return all(i.output is not None for i in self.images)

    def with_digest(self, digest: Callable[[bytes], str]) -> Plan:
        """The plan with hashed output names: ``digest(relative path bytes)[:16]``
        (``Ledger.unit_digest``: keyed, so the names say nothing without the ledger)."""
        if self.names != "hash":
            return self
        images = []
        for item in self.images:
            name = digest(item.rel.encode("utf-8"))[:HASH_CHARS]
            suffix = item.source.suffix.lower() if is_video(item.source) else ".png"
            images.append(replace(item, output=f"{name}{suffix}", name=name))
        done = replace(self, images=tuple(images))
        _check_outputs(done)
        return done


@dataclass
class BatchSummary:
    """What a batch did. ``as_dict()`` is the command line's ``--json`` summary."""

    inputs: int
    counts: dict[str, int]
    problems: list[Problem]
    output: Path | str  # a URL (str) when the outputs went to one (dpface.sources)
    report: Path | str | None
    ledger: str
    run_id: str
    mechanism: str
    seeded: bool
    names: str
    seconds: float
    stage_seconds: dict[str, float]
    workers: int = 1

    def __getattr__(self, name: str) -> int:
        counts = self.__dict__.get("counts", {})
        if name in counts:
            return int(counts[name])
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            **self.counts,
            "problems": [p.as_dict() for p in self.problems],
            "output": str(self.output),
            "report": None if self.report is None else str(self.report),
            "ledger": self.ledger,
            "run_id": self.run_id,
            "mechanism": self.mechanism,
            "seeded": self.seeded,
            "names": self.names,
            "seconds": round(self.seconds, 2),
            "images_per_second": (
                round(self.inputs / self.seconds, 3) if self.seconds > 0 else None
            ),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "workers": self.workers,
        }


COUNT_KEYS = (
    "images",
    "videos",
    "frames",
    "faces",
    "replaced",
    "pixelized",
    "masked",
    "refused",
    "uncertain",
    "fallback",
    "head_released",
    "head_masked",
    "no_face",
    "withheld",
    "failed",
)


# ====================================================================== subjects
def check_subject(name: str | None, *, where: str = "--subject") -> str | None:
    """A subject name as the ledger stores it; empty or invalid names are usage errors."""
    if name is None:
        return None
    from .ledger import normalize_subject

    try:
        return normalize_subject(name)
    except (UsageError, ValueError, TypeError) as err:
        raise UsageError(f"{where}: {err}") from err


def _key(path: str | os.PathLike[str]) -> str:
    """How paths are compared between a subject map and the plan (posix, no ``./``)."""
    text = os.fspath(path).replace("\\", "/")
    return PurePosixPath(text).as_posix() if text else ""


@dataclass(frozen=True)
class MapRow:
    line: int
    file: str
    face: int | None
    subject: str


@dataclass(frozen=True)
class SubjectMap:
    """Who is in which photo: rows of (file, optional face index, subject) from a CSV.

    A row without a face index names the single face of that photo; with an index it names
    that face, counted from 0 left to right (as ``Anonymizer.anonymize(subjects=[...])``).
    """

    path: str
    rows: tuple[MapRow, ...]

    def assign(self, planned: Plan) -> tuple[dict[int, dict[str, Any]], list[Problem]]:
        """Per planned image (by index): the ``anonymize`` keywords naming its faces; and
        problems for rows that name no input. A row matching several inputs is a usage error."""
        by_key: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(planned.images):
            for k in set(item.keys):
                by_key[k].append(i)
        whole: dict[int, tuple[str, int]] = {}
        faces: dict[int, dict[int, tuple[str, int]]] = defaultdict(dict)
        problems: list[Problem] = []
        for row in self.rows:
            hits = by_key.get(row.file, [])
            if not hits:
                problems.append(
                    Problem(
                        f"{self.path}, line {row.line}",
                        f"{row.file!r} is not among the inputs: row ignored (nobody was charged "
                        "for it)",
                    )
                )
                continue
            if len(hits) > 1:
                matched = ", ".join(str(planned.images[i].source) for i in hits[:4])
                raise UsageError(
                    f"{self.path}, line {row.line}: {row.file!r} matches several inputs "
                    f"({matched}); write the path as given on the command line"
                )
            i = hits[0]
            if row.face is None:
                other = whole.get(i) or next(iter(faces[i].values()), None)
                if other is not None:
                    raise UsageError(
                        f"{self.path}, line {row.line}: {row.file!r} is already "
                        f"mapped on line {other[1]}"
                    )
                whole[i] = (row.subject, row.line)
            else:
                if i in whole:
                    raise UsageError(
                        f"{self.path}, line {row.line}: {row.file!r} is mapped without a face "
                        f"index on line {whole[i][1]}; give every face of it an index instead"
                    )
                if row.face in faces[i]:
                    raise UsageError(
                        f"{self.path}, line {row.line}: face {row.face} of "
                        f"{row.file!r} is already mapped on line "
                        f"{faces[i][row.face][1]}"
                    )
                faces[i][row.face] = (row.subject, row.line)
        out: dict[int, dict[str, Any]] = {i: {"subject": s} for i, (s, _) in whole.items()}
        for i, named in faces.items():
            if not named:
                continue
            names: list[str | None] = [None] * (max(named) + 1)
            for idx, (s, _) in named.items():
                names[idx] = s
            out[i] = {"subjects": names}
        return out, problems


def read_subject_map(path: str | os.PathLike[str]) -> SubjectMap:
    """Read a ``file,face,subject`` CSV (``face`` column optional); every row is checked now
    and a bad one is a :class:`UsageError` naming its line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise UsageError(f"--subjects: no such file {p}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--subjects: cannot read {p}: {err}") from err
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[MapRow] = []
    seen: dict[tuple[str, int | None], int] = {}
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            unknown = [c for c in header if c not in ("file", "face", "subject")]
            if unknown:
                cols = ", ".join(map(repr, unknown))
                raise UsageError(
                    f"{p}, line {line}: unknown column(s) {cols}; the header is "
                    "file,face,subject (face optional)"
                )
            if len(set(header)) != len(header):
                raise UsageError(f"{p}, line {line}: a column is named twice")
            if "file" not in header or "subject" not in header:
                raise UsageError(
                    f"{p}, line {line}: the header needs the columns file and "
                    "subject (and optionally face)"
                )
            continue
        if len(cells) > len(header):
            raise UsageError(f"{p}, line {line}: {len(cells)} values for {len(header)} columns")
        values = dict(
            zip(header, [c.strip() for c in cells] + [""] * (len(header) - len(cells)), strict=True)
        )
        file = _key(values["file"])
        if not file:
            raise UsageError(f"{p}, line {line}: empty file")
        if not values["subject"]:
            raise UsageError(
                f"{p}, line {line}: empty subject for {file!r} (leave the row out "
                "to treat the face as unnamed)"
            )
        subject = check_subject(values["subject"], where=f"{p}, line {line}")
        assert subject is not None
        face: int | None = None
        if values.get("face"):
            try:
                face = int(values["face"])
            except ValueError as err:
                raise UsageError(
                    f"{p}, line {line}: face must be a whole number >= 0 (0 = the "
                    f"leftmost face), got {values['face']!r}"
                ) from err
            if face < 0:
                raise UsageError(f"{p}, line {line}: face must be >= 0, got {face}")
        if (file, face) in seen:
            what = "it" if face is None else f"face {face} of it"
            raise UsageError(
                f"{p}, line {line}: {file!r} repeated ({what} is already mapped on "
                f"line {seen[(file, face)]})"
            )
        if face is None and any(f == file for f, _ in seen):
            first = min(n for (f, _), n in seen.items() if f == file)
            raise UsageError(
                f"{p}, line {line}: {file!r} has face indices on line {first}; a "
                "row without an index cannot be mixed with them"
            )
        if face is not None and (file, None) in seen:
            raise UsageError(
                f"{p}, line {line}: {file!r} is mapped without a face index on "
                f"line {seen[(file, None)]}; give every face of it an index instead"
            )
        seen[(file, face)] = line
        rows.append(MapRow(line, file, face, subject))
    if header is None:
        raise UsageError(f"{p}: empty subject map; the header is file,face,subject")
    return SubjectMap(str(p), tuple(rows))


# ====================================================================== planning
def _walk(root: Path) -> tuple[list[Path], list[Problem]]:
    """Every file under ``root`` (sorted, symbolic links to folders not followed)."""
    files: list[Path] = []
    problems: list[Problem] = []
    for here, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(here)
        for d in list(dirs):
            if (base / d).is_symlink():
                problems.append(
                    Problem(
                        str(base / d),
                        "skipped: a symbolic link to a folder "
                        "(not followed; give its target as an input instead)",
                    )
                )
        for name in sorted(names):
            f = base / name
            if f.is_file():
                files.append(f)
            else:
                problems.append(Problem(str(f), "skipped: not a regular file"))
    return files, problems


def _unsupported(path: Path) -> Problem:
    return Problem(
        str(path),
        f"skipped: unsupported file type {path.suffix or '(no extension)'!r}; dpface reads "
        f"{' '.join(sorted(IMAGE_SUFFIXES | set(VIDEO_SUFFIXES)))}",
    )


def _tops(roots: list[Path]) -> list[str]:
    """One output folder (or file) name per input, de-duplicated in command-line order."""
    used: set[str] = set()
    tops = []
    for root in roots:
        base = root.name or root.resolve().name or "input"
        stem, suffix = (base, "") if root.is_dir() else (Path(base).stem, Path(base).suffix)
        cand, n = base, 1
        while cand.casefold() in used:
            n += 1
            cand = f"{stem}-{n}{suffix}"
        used.add(cand.casefold())
        tops.append(cand)
    return tops


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def plan(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    names: NamesPolicy = "keep",
    digest: Callable[[bytes], str] | None = None,
) -> Plan:
    """Collect the photos of ``inputs`` (files and folders, recursive) and decide each output.

    Files dpface cannot read, missing inputs and repeated inputs are listed as problems. Raises
    :class:`UsageError` (before anything is read or written) when no photo was found, when the
    output folder is, lies inside or contains an input folder, when an input file is a planned
    output, or when two outputs would still collide. ``names="hash"`` needs ``digest`` (a keyed
    digest such as ``Ledger.unit_digest``) to name the outputs; :func:`run` supplies it.
    """
    if names not in ("keep", "hash"):
        raise UsageError(f"names (--names) must be 'keep' or 'hash', got {names!r}")
    given = [Path(os.fspath(p)) for p in inputs]
    if not given:
        raise UsageError("no inputs given: name image files and/or folders")
    out_path = Path(os.fspath(out))
    out_real = Path(os.path.realpath(out_path))
    problems: list[Problem] = []
    roots: list[Path] = []
    seen_roots: dict[Path, Path] = {}
    for p in given:
        if not p.exists():
            problems.append(Problem(str(p), "no such file or folder"))
            continue
        if not (p.is_dir() or p.is_file()):
            problems.append(Problem(str(p), "skipped: not a regular file or folder"))
            continue
        real = Path(os.path.realpath(p))
        if real in seen_roots:
            problems.append(
                Problem(str(p), f"given more than once (as {seen_roots[real]}): processed once")
            )
            continue
        seen_roots[real] = p
        if p.is_dir():
            if out_real == real:
                raise UsageError(
                    f"the output folder {out_path} is the input folder {p}: outputs would "
                    "overwrite or mix with the originals; choose another -o/--out"
                )
            if _inside(out_real, real):
                raise UsageError(
                    f"the output folder {out_path} is inside the input folder {p}: the next run "
                    "would process the outputs as inputs; choose an -o/--out outside it"
                )
            if _inside(real, out_real):
                raise UsageError(
                    f"the input folder {p} is inside the output folder {out_path}: outputs "
                    "could overwrite originals; choose an -o/--out that does not contain it"
                )
        roots.append(p)
    tops = _tops(roots) if len(given) > 1 else [None] * len(roots)
    images: list[PlannedImage] = []
    by_real: dict[str, Path] = {}
    for root, top in zip(roots, tops, strict=True):
        if root.is_dir():
            files, found = _walk(root)
            problems.extend(found)
            pairs = [(f, f.relative_to(root)) for f in files]
        else:
            pairs = [(root, Path(root.name))]
        for f, rel in pairs:
            if f.suffix.lower() not in IMAGE_SUFFIXES and not is_video(f):
                problems.append(_unsupported(f))
                continue
            resolved = str(os.path.realpath(f))
            if resolved in by_real:
                problems.append(
                    Problem(str(f), f"the same file as {by_real[resolved]}: processed once")
                )
                continue
            by_real[resolved] = f
            if root.is_dir():
                tree = rel.as_posix() if top is None else f"{top}/{rel.as_posix()}"
                keys = {rel.as_posix(), _key(f), tree}
            else:
                tree = rel.as_posix() if top is None else top
                keys = {_key(f), rel.as_posix(), tree}
            keys.add(_key(real))
            images.append(PlannedImage(f, tree, tuple(sorted(keys))))
    if not images:
        shown = "".join(f"\n  {p.input}: {p.reason}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UsageError(f"no image files found in the inputs{shown}{more}")
    planned = Plan(
        out_path,
        tuple(images),
        tuple(problems),
        names,
        frozenset(by_real),
        tuple(sorted({os.path.realpath(r if r.is_dir() else r.parent) for r in roots})),
    )
    if names == "keep":
        planned = replace(planned, images=tuple(_keep_names(planned.images)))
        _check_outputs(planned)
    elif digest is not None:
        planned = planned.with_digest(digest)
    return planned


def _keep_names(images: Iterable[PlannedImage]) -> list[PlannedImage]:
    items = list(images)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        rel = PurePosixPath(item.rel)
        groups[str(rel.with_suffix("")).casefold()].append(i)
    out = []
    for item in items:
        rel = PurePosixPath(item.rel)
        clash = len(groups[str(rel.with_suffix("")).casefold()]) > 1
        output = f"{item.rel}.png" if clash else str(rel.with_suffix(".png"))
        if is_video(item.source):  # videos keep their name and container type
            output = item.rel
        out.append(replace(item, output=output, name=item.rel))
    return out


def _check_outputs(planned: Plan) -> None:
    """Outputs must be distinct (also ignoring case), must not be a folder another output
    needs, and must not be an input file."""
    owners: dict[str, PlannedImage] = {}
    folders: dict[str, PlannedImage] = {}
    for item in planned.images:
        assert item.output is not None and item.receipt is not None
        key = item.output.casefold()
        if key in owners:
            raise UsageError(
                f"{owners[key].source} and {item.source} would both be written to "
                f"{planned.out / item.output}; rename one of them"
            )
        owners[key] = item
        for parent in PurePosixPath(item.output).parents:
            if str(parent) != ".":
                folders.setdefault(str(parent).casefold(), item)
    for key, item in owners.items():
        if key in folders:
            raise UsageError(
                f"{item.source} would be written to {planned.out / (item.output or '')}, a path "
                f"{folders[key].source} needs as a folder; rename one of them"
            )
    out_real = Path(os.path.realpath(planned.out))
    for item in planned.images:
        assert item.output is not None and item.receipt is not None
        for target in (item.output, item.receipt):
            real = os.path.realpath(out_real / target)
            if real in planned.input_files:
                raise UsageError(
                    f"the input {planned.input_files and _source_of(planned, real)} is where "
                    f"{item.source}'s output {planned.out / target} would be written; choose "
                    "another -o/--out"
                )


def _source_of(planned: Plan, real: str) -> str:
    for item in planned.images:
        if os.path.realpath(item.source) == real:
            return str(item.source)
    return real


def prepare_output(planned: Plan) -> None:
    """Create the output folder and check it can be written (a :class:`UsageError` if not),
    before anything is charged."""
    out = planned.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dpface-write-check.{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to the output folder {out}: {err.strerror or err}") from err


# ====================================================================== writing
def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temp name, flush to disk, then rename: a crash leaves either the old
    file or the complete new one under ``path``, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of an RGB array, no metadata (no EXIF, text or time chunks), fast compression."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _scrub(value: Any, replacements: list[tuple[str, str]]) -> Any:
    """``value`` with every replacement applied to every string inside it."""
    if isinstance(value, str):
        for old, new in replacements:
            if old and old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, replacements) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, replacements) for v in value]
    return value


def _replacements(item: PlannedImage, roots: list[str], names: str) -> list[tuple[str, str]]:
    """Paths that must not appear in a receipt, longest first, and what replaces them."""
    name = item.name or item.rel
    src = item.source
    pairs = {os.path.realpath(src): name, str(src.absolute()): name, str(src): name}
    if names == "hash":
        pairs[item.rel] = name
        pairs[src.name] = name
    for root in roots:
        if len(root.rstrip("/")) > 1:  # never "/" itself: that would eat every slash
            pairs.setdefault(root.rstrip("/") + "/", "")
            pairs.setdefault(root.rstrip("/"), "<input>")
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda kv: -len(kv[0]))


def _write_report(ledger: Ledger, out: Path) -> Path | None:
    from .report import write_report

    kwargs: dict[str, Any] = {}
    if "run_id" in inspect.signature(write_report).parameters:
        kwargs["run_id"] = ledger.run_id
    write_report(ledger.path, out / REPORT_HTML, out / REPORT_JSON, **kwargs)
    return out / REPORT_HTML


def _budget_notes(ledger: Ledger, subjects: Iterable[str]) -> list[Problem]:
    default = ledger.default_budget
    if default is None:
        return []
    lines = []
    for s in sorted(set(subjects)):
        b = ledger.budget(s)
        if b is None:
            continue
        if math.isclose(b.epsilon, default.epsilon, rel_tol=1e-12) and math.isclose(
            b.delta, default.delta, rel_tol=1e-12, abs_tol=1e-300
        ):
            continue
        has = f"epsilon={b.epsilon:g}" + (f", delta={b.delta:g}" if b.delta else "")
        lines.append(
            Problem(
                "--budget",
                f"--budget {default.epsilon:g} ignored for existing subject {s} (budget {has}); "
                "change it with `dpface ledger set-budget`",
            )
        )
    if len(lines) > 6:
        rest = len(lines) - 5
        lines = [
            *lines[:5],
            Problem("--budget", f"... and {rest} more existing subject(s) whose budget differs"),
        ]
    return lines


# ====================================================================== one photo
@dataclass(frozen=True)
class _Context:
    """What every photo of a run needs besides the anonymiser (workers get a copy)."""

    out: Path
    roots: tuple[str, ...]
    names: str
    subject: str | None
    max_megapixels: float
    strict: bool
    job: str | None = None  # the job id (dpface.manifest): inputs are recorded and resumable


@dataclass
class _Outcome:
    """What one photo added to the run: counts, problems (in the order found), stage times."""

    counts: Counter[str]
    problems: list[Problem]
    stages: dict[str, float]


def _process(
    anonymizer: Anonymizer,
    item: PlannedImage,
    kwargs: dict[str, Any],
    ctx: _Context,
    charged: Callable[[], None] | None = None,
) -> _Outcome:
    """Anonymise one planned photo and write its output and receipt. Never raises: every
    failure is a problem of this photo. ``charged`` is called once its ledger work is over."""
    from .models.images import ImageError, ImageTooLarge, check_pixels, image_header

    counts: Counter[str] = Counter()
    problems: list[Problem] = []
    stages: dict[str, float] = defaultdict(float)
    outcome = _Outcome(counts, problems, stages)
    where = str(item.source)

    def failed(reason: str) -> _Outcome:
        counts["failed"] += 1
        problems.append(Problem(where, reason))
        return outcome

    try:
        assert item.output is not None and item.receipt is not None
        target, receipt_path = ctx.out / item.output, ctx.out / item.receipt
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                raise IsADirectoryError(f"{target} is a folder")
            if not os.access(target.parent, os.W_OK):
                raise PermissionError(f"{target.parent} is not writable")
        except OSError as err:
            return failed(
                f"not processed: its output {target} cannot be written ({err}); "
                "nothing was read or charged"
            )
        digest: str | None = None
        if ctx.job is not None:
            with contextlib.suppress(OSError):  # unreadable: the anonymiser says why
                digest = manifest.input_digest(anonymizer.ledger, item.source)
            done = (
                None
                if digest is None
                else manifest.read_done(ctx.out, item.output, item.receipt, digest)
            )
            if done is not None:  # finished by an earlier run of this job: skipped
                if charged is not None:
                    charged()
                counts.update(done)
                counts["skipped"] += 1
                return outcome
        if is_video(item.source):
            _process_video(anonymizer, item, kwargs, ctx, charged, outcome, failed)
            if counts["videos"] and digest is not None and ctx.job is not None:
                _mark_done(ctx, item, digest, outcome)
            return outcome
        frames = 1
        try:
            size, frames = image_header(item.source)
            check_pixels(size, ctx.max_megapixels * 1e6, name=where)
        except ImageTooLarge as err:
            return failed(f"not processed: {err}; nothing was charged")
        except ImageError:
            pass  # unreadable: the anonymiser reports why, with the same words as always
        kw = dict(kwargs)
        if ctx.subject is not None:
            kw["subject"] = ctx.subject
        if digest is not None and ctx.job is not None:
            kw["release_key"] = manifest.release_key(ctx.job, item.output, digest)
        try:
            res = anonymizer.anonymize(item.source, name=item.name, **kw)
        finally:
            if charged is not None:
                charged()
        for stage, sec in res.timings.items():
            stages[stage] += sec
        receipt = _scrub(res.receipt, _replacements(item, list(ctx.roots), ctx.names))
        if not res.ok or res.image is None:
            receipt["output"] = None
            _try_write(receipt_path, receipt)
            return failed(res.error or "failed")
        if frames > 1:  # nothing of the others is written: said, not silently dropped
            problems.append(
                Problem(
                    where,
                    f"only the first of its {frames} frames/pages was anonymised and written; "
                    f"the other {frames - 1} were not written (save them as separate images, "
                    "or give the clip as a video)",
                )
            )
        note = res.receipt.get("detection_note")
        if not res.faces:
            counts["no_face"] += 1
            if ctx.strict:
                counts["withheld"] += 1
                problems.append(
                    Problem(
                        where,
                        "withheld (no face found; --strict): "
                        + str(note or "the detector found no face"),
                    )
                )
                receipt["output"] = None
                _try_write(receipt_path, receipt)
                return outcome
            problems.append(
                Problem(
                    where,
                    "written unchanged (no face found): "
                    + str(note or "the detector found no face"),
                )
            )
        face_counts: Counter[str] = Counter()
        for f in res.faces:
            face_counts["faces"] += 1
            face_counts[f.status] += 1
            if f.refused:
                face_counts["refused"] += 1
            if f.uncertain:
                face_counts["uncertain"] += 1
            if f.protection == "dp-fallback":
                face_counts["fallback"] += 1
            if f.head is not None:
                released = f.head["protection"] == "dp-pix"
                face_counts["head_released" if released else "head_masked"] += 1
        charges = sum(1 for f in res.faces if f.ledger_event is not None) + sum(
            1 for f in res.faces if f.head is not None and f.head["ledger_event"] is not None
        )
        t = time.perf_counter()
        try:
            write_atomic(target, png_bytes(res.image))
        except OSError as err:
            what = (
                f"the budget WAS charged ({charges} release(s)) but nothing was written"
                if charges
                else "nothing was written (nothing was charged)"
            )
            receipt["output"] = None
            _try_write(receipt_path, receipt)
            return failed(f"{what}: {err}")
        receipt["output"] = item.output
        if not _try_write(receipt_path, receipt):
            problems.append(
                Problem(where, f"the image was written but its receipt {receipt_path} could not be")
            )
        stages["write"] += time.perf_counter() - t
        counts["images"] += 1
        counts.update(face_counts)
        if digest is not None and ctx.job is not None:
            _mark_done(ctx, item, digest, outcome)
    except Exception as err:  # a bug must not lose the rest of the batch
        return failed(
            f"{type(err).__name__}: {err} (an internal error; this is a bug, please report it)"
        )
    return outcome


def _mark_done(ctx: _Context, item: PlannedImage, digest: str, outcome: _Outcome) -> None:
    """Record a finished input in the job's manifest (after its output and receipt)."""
    assert item.output is not None and item.receipt is not None
    try:
        manifest.mark_done(ctx.out, item.output, item.receipt, digest, dict(outcome.counts))
    except OSError as err:
        outcome.problems.append(
            Problem(
                str(item.source),
                f"written, but not recorded in the job manifest ({err}): a resumed job "
                "processes it again",
            )
        )


_frame_progress: Callable[[str, str, int, int], None] | None = None  # set by run()


def _process_video(
    anonymizer: Anonymizer,
    item: PlannedImage,
    kwargs: dict[str, Any],
    ctx: _Context,
    charged: Callable[[], None] | None,
    outcome: _Outcome,
    failed: Callable[[str], _Outcome],
) -> _Outcome:
    """One video (:mod:`dpface.video`): the output keeps its container type; options from
    ``anonymizer.video_options`` (audio, detect_every); a subject map's ``face`` index i names
    track i + 1. The receipt is the video receipt."""
    assert item.output is not None and item.receipt is not None
    target, receipt_path = ctx.out / item.output, ctx.out / item.receipt
    where = str(item.source)
    opts: dict[str, Any] = dict(getattr(anonymizer, "video_options", None) or {})
    if ctx.subject is not None:
        opts["subject"] = ctx.subject
    elif kwargs.get("subject") is not None:
        opts["subject"] = kwargs["subject"]
    elif kwargs.get("subjects"):
        opts["subjects"] = {i + 1: s for i, s in enumerate(kwargs["subjects"]) if s}
    tell = _frame_progress
    name = item.name or item.rel
    progress = None if tell is None else (lambda stage, d, n: tell(name, stage, d, n))
    try:
        res = anonymizer.anonymize_video(
            item.source, target, name=item.name, progress=progress, **opts
        )
    finally:
        if charged is not None:
            charged()
    for stage, sec in res.timings.items():
        if stage != "total":
            outcome.stages[stage] += sec
    receipt = _scrub(res.receipt, _replacements(item, list(ctx.roots), ctx.names))
    if not res.ok:
        receipt["output"] = None
        _try_write(receipt_path, receipt)
        return failed(res.error or "failed")
    counts = outcome.counts
    if not res.tracks:
        counts["no_face"] += 1
        if ctx.strict:
            target.unlink(missing_ok=True)
            counts["withheld"] += 1
            outcome.problems.append(Problem(where, "withheld (no face in any frame; --strict)"))
            receipt["output"] = None
            _try_write(receipt_path, receipt)
            return outcome
        outcome.problems.append(Problem(where, "written unchanged (no face in any frame)"))
    receipt["output"] = item.output
    if not _try_write(receipt_path, receipt):
        outcome.problems.append(
            Problem(where, f"the video was written but its receipt {receipt_path} could not be")
        )
    counts["videos"] += 1
    counts["frames"] += res.frames
    for t in res.tracks:
        counts["faces"] += 1  # a face in a video is a track
        counts[t.status] += 1
        counts["refused"] += int(t.refused)
        counts["uncertain"] += int(t.uncertain)
        counts["fallback"] += int(t.protection == "dp-fallback" or t.fallback_frames > 0)
        if t.head is not None and t.head["protection"] != "none":
            counts["head_released" if t.head["protection"] == "dp-pix" else "head_masked"] += 1
    return outcome


# ====================================================================== worker processes
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
WORKER_ENV = "DPFACE_WORKER_PROCESS"  # set in worker processes: they never start a batch
_PENDING, _RUNNING, _CHARGED = 0, 1, 2  # a photo's state; _CHARGED: its ledger work is over
_POLL = 0.02  # seconds between looks at the shared state
WORKER_MEMORY = 2 << 30  # measured: one process peaks at 1.3-2.3 GB on the sample photos


def refuse_in_worker() -> None:
    """A worker process must not start a batch of its own. Python's ``spawn`` start method
    re-runs the top level of the caller's script in every worker; a script that starts a run
    there without ``if __name__ == "__main__":`` would otherwise run (and charge) it again."""
    if os.environ.get(WORKER_ENV):
        raise UsageError(
            "a dpface worker process may not start a batch: the script that started the run "
            'starts runs at its top level; put them under `if __name__ == "__main__":`'
        )


def default_workers() -> int:
    """The default number of processes: the usable cores, but no more than the available
    memory holds at ``WORKER_MEMORY`` bytes each (a process with its models and a large photo
    in flight), and at least 1."""
    return max(1, min(usable_cores(), _available_memory() // WORKER_MEMORY or 1))


def _available_memory() -> int:
    """Bytes of memory available to new processes (Linux ``MemAvailable``); a large number
    where that cannot be read, so only the cores then limit the default."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    count = getattr(os, "process_cpu_count", None)  # Python >= 3.13
    if count is not None:
        n = count()
    else:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count()
    return max(1, n or 1)


def _ordering(
    items: Sequence[PlannedImage],
    kwargs: Sequence[dict[str, Any]],
    subject: str | None,
    linking: bool,
) -> tuple[tuple[int, ...], ...]:
    """For every photo, the earlier photos whose ledger work must be over before its own
    starts: those sharing a named subject, byte-identical files (same unnamed-face units), and
    with linking every earlier photo (matching depends on who was enrolled before). So budgets
    are spent, refusals fall and pseudonyms are drawn in input order, as in one process."""
    sizes: dict[int, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        with contextlib.suppress(OSError):
            sizes[item.source.stat().st_size].append(i)
    same_file: dict[int, str] = {}
    for group in sizes.values():
        if len(group) < 2:
            continue
        for i in group:
            with contextlib.suppress(OSError):
                same_file[i] = _file_digest(items[i].source)
    last: dict[str, int] = {}
    before: list[tuple[int, ...]] = []
    for i in range(len(items)):
        keys: set[str] = set()
        if linking:
            keys.add("*")
        kw = kwargs[i]
        names = [subject, kw.get("subject"), *kw.get("subjects", ())]
        keys.update(f"subject:{s}" for s in names if s)
        if i in same_file:
            keys.add(f"file:{same_file[i]}")
        before.append(tuple(sorted({last[k] for k in keys if k in last})))
        for k in keys:
            last[k] = i
    return tuple(before)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Turns:
    """Makes a process wait, at its photo's first ledger call, until the ledger work of the
    earlier photos it depends on (:func:`_ordering`) is over."""

    def __init__(self, state: Any, before: Sequence[tuple[int, ...]]) -> None:
        self.state = state
        self.before = before
        self.current: int | None = None
        self.passed = True

    def begin(self, index: int) -> None:
        self.current, self.passed = index, not self.before[index]

    def wait(self) -> None:
        if self.passed or self.current is None:
            return
        for m in self.before[self.current]:
            while self.state[m] != _CHARGED:
                if not _caller_alive():
                    raise SystemExit("dpface worker: the calling process is gone")
                time.sleep(_POLL)
        self.passed = True

    def charged(self) -> None:
        if self.current is not None:
            self.state[self.current] = _CHARGED


class _InTurn:
    """Forwards to ``target``; every method but ``free`` ones first waits for the turn."""

    def __init__(self, target: Any, turns: _Turns, free: frozenset[str]) -> None:
        self._target, self._turns, self._free = target, turns, free

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name in self._free or name.startswith("_") or not callable(value):
            return value
        turns = self._turns

        def in_turn(*args: Any, **kwargs: Any) -> Any:
            turns.wait()
            return value(*args, **kwargs)

        return in_turn


_LEDGER_FREE = frozenset({"unit_digest", "close"})  # pure, or the process's own business
_STORE_FREE = frozenset({"close"})


def _in_turn(anonymizer: Anonymizer, turns: _Turns) -> tuple[Any, Any]:
    """Route the anonymiser's ledger and template store through ``turns``; the originals."""
    ledger, templates = anonymizer.ledger, anonymizer.templates
    anonymizer.ledger = cast("Ledger", _InTurn(ledger, turns, _LEDGER_FREE))
    if templates is not None:
        anonymizer.templates = cast("TemplateStore", _InTurn(templates, turns, _STORE_FREE))
    return ledger, templates


@dataclass(frozen=True)
class _Job:
    """What a worker needs once the run starts (sent to each worker once)."""

    run_id: str
    items: tuple[PlannedImage, ...]
    kwargs: tuple[dict[str, Any], ...]
    before: tuple[tuple[int, ...], ...]
    ctx: _Context


Prepare = Callable[[], Callable[[str], "Anonymizer"]]
"""Runs first in a worker process (e.g. loads the models) and returns how to make its
anonymiser for a run id; the ledger must only be opened by that second step."""


@dataclass(frozen=True)
class _BuildLater:
    """A :data:`Prepare` from a plain ``build()``: everything happens when the run starts."""

    build: Callable[[], Anonymizer]

    def __call__(self) -> Callable[[str], Anonymizer]:
        return functools.partial(_built, self.build)


def _built(build: Callable[[], Anonymizer], run_id: str) -> Anonymizer:
    anonymizer = build()
    anonymizer.ledger.run_id = run_id
    return anonymizer


def _caller_alive() -> bool:
    """False in a worker whose calling process has ended (it then stops too)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


def _claim(counter: Any, state: Any, owner: Any, wid: int) -> int | None:
    """The next photo nobody has taken (input order), now marked as ``wid``'s; or None."""
    with counter.get_lock():
        i = int(counter.value)
        if i < 0 or i >= len(state):
            return None
        counter.value = i + 1
        owner[i] = wid
        state[i] = _RUNNING
        return i


def _one_thread() -> None:
    """One compute thread in this process: the processes share the cores instead."""
    for name in THREAD_ENV:
        os.environ[name] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(1)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def _worker(
    prepare: Prepare, wid: int, counter: Any, state: Any, owner: Any, jobs: Any, results: Any
) -> None:
    """A worker process: prepare (load the models), wait for the run, then take photos until
    none is left. Every failure to start is reported; the other processes go on."""
    _one_thread()
    try:
        make = prepare()
    except BaseException as err:
        results.put(("down", wid, f"{type(err).__name__}: {err}"))
        return
    results.put(("ready", wid, None))
    while jobs.empty():  # the run starts once the caller has checked everything
        if not _caller_alive():
            return
        time.sleep(_POLL)
    job: _Job | None = jobs.get()
    if job is None:
        return
    try:
        anonymizer = make(job.run_id)  # every release is part of the caller's run
    except BaseException as err:
        results.put(("down", wid, f"{type(err).__name__}: {err}"))
        return
    turns = _Turns(state, job.before)
    ledger, templates = _in_turn(anonymizer, turns)
    try:
        while _caller_alive() and (i := _claim(counter, state, owner, wid)) is not None:
            turns.begin(i)
            outcome = _process(anonymizer, job.items[i], job.kwargs[i], job.ctx, turns.charged)
            turns.charged()
            results.put(("done", i, outcome))
    finally:
        ledger.close()
        if templates is not None:
            templates.close()
    results.put(("bye", wid, None))


def _needs_no_main(prepare: Prepare) -> bool:
    """True when ``prepare`` pickles without the caller's ``__main__`` module."""
    import pickle

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        pickle.dumps(prepare)
    except Exception:
        return False
    finally:
        if main is not None:
            sys.modules["__main__"] = main
    return True


class WorkerPool:
    """Worker processes for a batch of ``images`` photos, started ahead of it.

    ``workers`` counts the calling process, which takes photos too: ``workers - 1`` processes
    are spawned now, each running ``prepare`` (see :data:`Prepare`; e.g. loading its models)
    while the caller plans, checks and loads its own; :func:`run` then hands them the photos.
    Close it (or use it as a context manager) if the run never starts.
    """

    def __init__(self, workers: int, prepare: Prepare, images: int) -> None:
        import multiprocessing as mp
        import threading

        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
            raise UsageError(f"a worker pool needs workers >= 2, got {workers!r}")
        self.size = workers
        self.total = images
        ctx = mp.get_context("spawn")
        self.counter = ctx.Value("q", 0)
        self.state = ctx.Array("b", images, lock=False)
        self.owner = ctx.Array("i", images, lock=False)  # 0: the calling process
        self.jobs = ctx.SimpleQueue()
        self.results = ctx.SimpleQueue()
        self.items: tuple[PlannedImage, ...] = ()
        self.out = Path()
        self.progress: Progress | None = None
        self.outcomes: dict[int, _Outcome] = {}
        self.notes: list[Problem] = []
        self.low = 0  # every photo before this one has its outcome
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.sent = False
        self.closed = False
        self.gone: set[int] = set()  # workers that said goodbye or were found dead
        self.ready: set[int] = set()  # workers that prepared
        self.helper = threading.Thread(target=self._collect, name="dpface-collect", daemon=True)
        refuse_in_worker()
        saved = {k: os.environ.get(k) for k in (*THREAD_ENV, WORKER_ENV)}
        self.procs: dict[int, Any] = {}
        main = sys.modules.get("__main__")
        try:
            for k in (*THREAD_ENV, WORKER_ENV):
                os.environ[k] = "1"  # the workers start with this, before importing anything
            if _needs_no_main(prepare):
                # spawn would re-run the caller's script (or re-import the command) in every
                # worker; nothing the workers run comes from it, so they start without it
                sys.modules["__main__"] = types.ModuleType("__main__")
            for wid in range(1, workers):
                args = (prepare, wid, self.counter, self.state, self.owner, self.jobs, self.results)
                proc = ctx.Process(
                    target=_worker, args=args, name=f"dpface-worker-{wid}", daemon=True
                )
                proc.start()
                self.procs[wid] = proc
        except BaseException:
            self.close()
            raise
        finally:
            if main is not None:
                sys.modules["__main__"] = main
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, anonymizer: Anonymizer, job: _Job, progress: Progress | None) -> list[_Outcome]:
        """Hand the workers ``job``, take photos here too, and return every photo's outcome."""
        if self.closed or self.sent:
            raise UsageError("this worker pool has already run (or was closed)")
        if len(job.items) != self.total:
            raise UsageError(
                f"the worker pool was started for {self.total} photos, not {len(job.items)}"
            )
        self.items, self.out, self.progress = job.items, job.ctx.out, progress
        self.sent = True
        done = False
        try:
            for _ in self.procs:
                self.jobs.put(job)
            self.helper.start()
            with _OneThreadHere():
                self._serve(anonymizer, job)
            while not self._finished():
                self._reap()
                time.sleep(_POLL)
            done = True
        finally:
            self.close(graceful=done)
        return [self.outcomes[i] for i in range(self.total)]

    def close(self, *, graceful: bool = False) -> None:
        """Stop the workers: after a finished run they end on their own; otherwise (or if
        still preparing) they are stopped."""
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        with self.counter.get_lock():
            self.counter.value = -1  # nobody takes another photo
        if self.sent:
            self._reap()
        for wid, proc in self.procs.items():
            # a worker still preparing has nothing to finish: it just stops
            proc.join(timeout=5 if graceful and wid in self.ready else 0)
            if proc.is_alive():
                with self.lock:
                    self.gone.add(wid)  # stopped by us: not a crash
                proc.terminate()
                proc.join(timeout=5)
        if self.helper.is_alive():
            self.helper.join(timeout=5)
        if self.sent:
            self._reap()  # a note that arrived last

    def _finished(self) -> bool:
        with self.lock:
            return len(self.outcomes) == self.total

    def _serve(self, anonymizer: Anonymizer, job: _Job) -> None:
        """This process's share: photos taken one by one, like any worker's."""
        turns = _Turns(self.state, job.before)
        ledger, templates = _in_turn(anonymizer, turns)
        try:
            while (i := _claim(self.counter, self.state, self.owner, 0)) is not None:
                self._tell()
                turns.begin(i)
                outcome = _process(anonymizer, job.items[i], job.kwargs[i], job.ctx, turns.charged)
                turns.charged()
                self._record(i, outcome)
        finally:
            anonymizer.ledger, anonymizer.templates = ledger, templates

    def _collect(self) -> None:
        while not self.stop.is_set():
            self._reap()
            time.sleep(_POLL)

    def _reap(self) -> None:
        """Read the workers' messages; a worker found dead loses only the photo it was on."""
        with self.lock:
            dead = [
                wid
                for wid, p in self.procs.items()
                if wid not in self.gone and p.exitcode is not None
            ]
            while not self.results.empty():  # what a dead worker sent is read before its loss
                kind, key, value = self.results.get()
                if kind == "done":
                    self._record(key, value)
                elif kind == "ready":
                    self.ready.add(key)
                elif kind == "down":
                    self.gone.add(key)
                    self.notes.append(
                        Problem(
                            "--workers",
                            f"worker process {key} could not start ({value}); the "
                            "other processes took its share",
                        )
                    )
                else:
                    self.gone.add(key)
            for wid in dead:
                if wid in self.gone:
                    continue
                self.gone.add(wid)
                proc = self.procs[wid]
                lost = [
                    i
                    for i in range(self.low, self.total)
                    if i not in self.outcomes and self.owner[i] == wid and self.state[i] != _PENDING
                ]
                for i in lost:
                    self._clean(i, proc.pid)
                    self._lost(
                        i,
                        f"the worker process handling it stopped unexpectedly (exit "
                        f"code {proc.exitcode})",
                    )
                if not lost:
                    hint = (
                        ""
                        if wid in self.ready
                        else " (while starting: a script that starts runs must do so under "
                        '`if __name__ == "__main__":`, which the workers skip)'
                    )
                    self.notes.append(
                        Problem(
                            "--workers",
                            f"worker process {wid} stopped unexpectedly (exit code "
                            f"{proc.exitcode}){hint}; the other processes took its share",
                        )
                    )
            if len(self.gone) == len(self.procs) and self.counter.value >= self.total:
                # no worker is left: a photo taken but never reported is lost, not waited for
                for i in range(self.low, self.total):
                    if i not in self.outcomes and self.state[i] != _PENDING and self.owner[i]:
                        self._lost(i, "its worker process ended without reporting it")

    def _lost(self, i: int, why: str) -> None:
        """Photo ``i`` died with its worker: its problem, and whoever waits for it goes on."""
        self.state[i] = _CHARGED
        where = str(self.items[i].source)
        reason = (
            f"{why}: nothing was written, but its faces may have been charged in the ledger; "
            "run again with --resume (resume=True) to finish it without charging again"
        )
        self._record(i, _Outcome(Counter(failed=1), [Problem(where, reason)], {}))

    def _clean(self, i: int, pid: int | None) -> None:
        """Remove the temp files a dead worker may have left (``write_atomic`` names)."""
        item = self.items[i]
        for rel in (item.output, item.receipt):
            if rel and pid:
                path = self.out / rel
                with contextlib.suppress(OSError):
                    (path.parent / f".{path.name}.{pid}.tmp").unlink(missing_ok=True)

    def _record(self, i: int, outcome: _Outcome) -> None:
        with self.lock:
            if i in self.outcomes:
                return
            self.outcomes[i] = outcome
            while self.low in self.outcomes:
                self.low += 1
            self._tell()

    def _tell(self) -> None:
        if self.progress is None:
            return
        with self.lock:
            item = self.items[self.low] if self.low < self.total else None
            self.progress(
                len(self.outcomes), self.total, "" if item is None else item.name or item.rel
            )


class _OneThreadHere:
    """This process computes with one thread during a batch; restored after. Measured on 2
    cores: the generator and the detector's torch models ran 1.2x (idle machine) to 5x (one
    other busy process) faster with one thread than with torch's default of one per core."""

    def __enter__(self) -> None:
        self.env = {k: os.environ.get(k) for k in THREAD_ENV}
        for k in THREAD_ENV:
            os.environ[k] = "1"  # a library first loaded during the batch starts with one
        self.torch = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
        self.cv2 = sys.modules["cv2"].getNumThreads() if "cv2" in sys.modules else None
        self.blas: Any = None
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            self.blas = threadpool_limits(1)
        if self.torch is not None:
            sys.modules["torch"].set_num_threads(1)
        if self.cv2 is not None:
            sys.modules["cv2"].setNumThreads(1)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.torch is not None:
            sys.modules["torch"].set_num_threads(self.torch)
        if self.cv2 is not None:
            sys.modules["cv2"].setNumThreads(self.cv2)
        if self.blas is not None:
            self.blas.restore_original_limits()


# ====================================================================== the batch
def run(
    anonymizer: Anonymizer,
    planned: Plan,
    *,
    subject: str | None = None,
    subject_map: SubjectMap | None = None,
    max_megapixels: float = 100.0,
    strict: bool = False,
    settings: dict[str, Any] | None = None,
    budget_given: bool = False,
    report: bool = True,
    progress: Progress | None = None,
    workers: int | WorkerPool = 1,
    build: Callable[[], Anonymizer] | None = None,
    frame_progress: Callable[[str, str, int, int], None] | None = None,
    resume: bool = False,
) -> BatchSummary:
    """Anonymise every planned photo with ``anonymizer`` and write outputs and receipts.

    ``subject`` names the one person in every photo; ``subject_map`` names faces per photo
    (:func:`read_subject_map`). Photos larger than ``max_megapixels`` (from their header) are
    refused before decoding. ``strict``: a photo in which no face was found is withheld
    instead of written unchanged. ``settings`` are recorded with the run in the ledger;
    ``budget_given``: say when an existing subject keeps a budget other than the ledger's
    default. ``report``: write this run's report into the output folder.

    ``workers`` > 1 (at most one per photo) runs that many processes, this one included, each
    with one compute thread: ``build`` (a picklable callable, e.g.
    ``AnonymizeConfig.build_anonymizer``) makes each other process's anonymiser once, on the
    same ledger file; or ``workers`` is a :class:`WorkerPool` started earlier for these photos
    (closed by this call). All releases belong to this run. Photos that share a named subject (or
    an identical file, or any photo when faces are linked) do their ledger work in input
    order, so the outputs, receipts and problems are those of one process, in input order (the
    noise aside); a worker that dies costs only the photo it was on, reported as its problem.
    ``progress`` may then be called from a helper thread.
    ``frame_progress(name, stage, frames done, frames expected)`` follows each video this
    process anonymises frame by frame (stages "analyse" and "render").

    The run is a job recorded in the output folder's manifest (:mod:`dpface.manifest`):
    ``resume`` continues the job found there (inputs already finished are skipped and counted
    as ``skipped``; an input whose faces were charged but whose output was not written gets
    back the values already paid for, not a new charge); without it a new job starts there.
    """
    global _frame_progress
    refuse_in_worker()
    ledger = anonymizer.ledger
    subject = check_subject(subject)
    if subject is not None and subject_map is not None:
        raise UsageError("give --subject or --subjects, not both")
    if isinstance(max_megapixels, bool) or not max_megapixels > 0:
        raise UsageError(f"max_megapixels must be > 0, got {max_megapixels!r}")
    pool = workers if isinstance(workers, WorkerPool) else None
    if pool is not None:
        workers = pool.size
        if pool.total != len(planned.images):
            raise UsageError(
                f"the worker pool was started for {pool.total} photos, not {len(planned.images)}"
            )
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a whole number >= 1, got {workers!r}")
    else:
        workers = min(workers, max(1, len(planned.images)))
    if workers > 1:
        if pool is None and build is None:
            raise UsageError("workers > 1 needs build= (how each process makes its anonymiser)")
        if str(ledger.path) == ":memory:":
            raise UsageError(
                "workers > 1 needs a ledger file: an in-memory ledger cannot be "
                "shared, so budgets would not bind across processes"
            )
        if anonymizer.seeded:
            raise UsageError("seeded noise is reproducible only in one process: use workers=1")
        if pool is None:
            assert build is not None
            pool = WorkerPool(workers, _BuildLater(build), len(planned.images))
    _frame_progress = frame_progress
    try:
        return _run(
            anonymizer,
            planned,
            pool,
            subject,
            subject_map,
            max_megapixels,
            strict,
            settings,
            budget_given,
            report,
            progress,
            resume,
        )
    finally:
        _frame_progress = None
        if pool is not None:
            pool.close()


def _run(
    anonymizer: Anonymizer,
    planned: Plan,
    pool: WorkerPool | None,
    subject: str | None,
    subject_map: SubjectMap | None,
    max_megapixels: float,
    strict: bool,
    settings: dict[str, Any] | None,
    budget_given: bool,
    report: bool,
    progress: Progress | None,
    resume: bool = False,
) -> BatchSummary:
    ledger = anonymizer.ledger
    if not planned.resolved:
        planned = planned.with_digest(ledger.unit_digest)
    assigned, map_problems = subject_map.assign(planned) if subject_map else ({}, [])
    prepare_output(planned)
    out = planned.out
    roots = sorted({*planned.roots, *(os.path.realpath(i.source.parent) for i in planned.images)})
    problems: list[Problem] = [*planned.problems, *map_problems]
    counts: Counter[str] = Counter({k: 0 for k in COUNT_KEYS})
    stages: dict[str, float] = defaultdict(float)
    run_settings = {
        **anonymizer.settings(),
        "inputs": len(planned.images),
        "names": planned.names,
        "strict": strict,
        **(settings or {}),
    }
    mjob = manifest.start(
        out,
        manifest.fingerprint({**run_settings, "max_megapixels": float(max_megapixels)}),
        resume=resume,
        ledger=ledger,
    )
    manifest.clean_temp(
        out, [r for i in planned.images for r in (i.output, i.receipt) if r is not None]
    )
    ctx = _Context(
        out, tuple(roots), planned.names, subject, float(max_megapixels), strict, mjob.id
    )
    ledger.record_run({**run_settings, "job": mjob.id, "resumed": mjob.resumed})
    total = len(planned.images)
    kwargs = [dict(assigned.get(n, {})) for n in range(total)]
    start = time.perf_counter()
    notes: list[Problem] = []
    if pool is not None:
        job = _Job(
            ledger.run_id,
            planned.images,
            tuple(kwargs),
            _ordering(planned.images, kwargs, subject, anonymizer.templates is not None),
            ctx,
        )
        outcomes = pool.run(anonymizer, job, progress)
        notes = pool.notes
    else:
        outcomes = []
        with _OneThreadHere():
            for n, item in enumerate(planned.images):
                if progress is not None:
                    progress(n, total, item.name or item.rel)
                outcomes.append(_process(anonymizer, item, kwargs[n], ctx))
    for outcome in outcomes:
        counts.update(outcome.counts)
        problems.extend(outcome.problems)
        for stage, sec in outcome.stages.items():
            stages[stage] += sec
    problems.extend(notes)
    elapsed = time.perf_counter() - start
    manifest.finish(mjob, ledger, complete=counts["images"] + counts["videos"] == total)
    if progress is not None:
        progress(total, total, "")
    named = set()
    if subject is not None:
        named.add(subject)
    for kw in assigned.values():
        named.update(s for s in ([kw["subject"]] if "subject" in kw else kw["subjects"]) if s)
    if budget_given:
        problems.extend(_budget_notes(ledger, named | set(ledger.subjects(run_id=ledger.run_id))))
    ledger.finish_run(
        {**counts, "inputs": total, "problems": len(problems), "seconds": round(elapsed, 3)}
    )
    report_path: Path | None = None
    # a resumed job whose inputs were all written before keeps the report of the run that
    # wrote them (this run released nothing)
    all_skipped = total > 0 and counts["skipped"] == total
    if report and str(ledger.path) != ":memory:" and not all_skipped:
        try:
            report_path = _write_report(ledger, out)
        except OSError as err:
            problems.append(Problem(str(out / REPORT_HTML), f"report not written: {err}"))
    elif all_skipped and (out / REPORT_HTML).is_file():
        report_path = out / REPORT_HTML  # the job's earlier report, left as it was
    return BatchSummary(
        inputs=total,
        counts=dict(counts),
        problems=problems,
        output=out,
        report=report_path,
        ledger=str(ledger.path),
        run_id=ledger.run_id,
        mechanism=anonymizer.mechanism.statement(),
        seeded=bool(anonymizer.mechanism.seeded),
        names=planned.names,
        seconds=elapsed,
        stage_seconds=dict(stages),
        workers=1 if pool is None else pool.size,
    )


def _try_write(path: Path, receipt: dict[str, Any]) -> bool:
    try:
        write_atomic(path, (json.dumps(receipt, indent=2, ensure_ascii=False) + "\n").encode())
    except OSError:
        return False
    return True
