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

import csv
import inspect
import io
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import UsageError

if TYPE_CHECKING:
    from .ledger import Ledger
    from .pipeline import Anonymizer

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchSummary",
    "Plan",
    "PlannedImage",
    "Problem",
    "Progress",
    "SubjectMap",
    "check_subject",
    "plan",
    "prepare_output",
    "read_subject_map",
    "run",
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
            images.append(replace(item, output=f"{name}.png", name=name))
        done = replace(self, images=tuple(images))
        _check_outputs(done)
        return done


@dataclass
class BatchSummary:
    """What a batch did. ``as_dict()`` is the command line's ``--json`` summary."""

    inputs: int
    counts: dict[str, int]
    problems: list[Problem]
    output: Path
    report: Path | None
    ledger: str
    run_id: str
    mechanism: str
    seeded: bool
    names: str
    seconds: float
    stage_seconds: dict[str, float]

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
        }


COUNT_KEYS = ("images", "faces", "replaced", "pixelized", "masked", "refused", "no_face",
              "withheld", "failed")


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
                problems.append(Problem(
                    f"{self.path}, line {row.line}",
                    f"{row.file!r} is not among the inputs: row ignored (nobody was charged "
                    "for it)"))
                continue
            if len(hits) > 1:
                names = ", ".join(str(planned.images[i].source) for i in hits[:4])
                raise UsageError(
                    f"{self.path}, line {row.line}: {row.file!r} matches several inputs "
                    f"({names}); write the path as given on the command line")
            i = hits[0]
            if row.face is None:
                other = whole.get(i) or next(iter(faces[i].values()), None)
                if other is not None:
                    raise UsageError(f"{self.path}, line {row.line}: {row.file!r} is already "
                                     f"mapped on line {other[1]}")
                whole[i] = (row.subject, row.line)
            else:
                if i in whole:
                    raise UsageError(
                        f"{self.path}, line {row.line}: {row.file!r} is mapped without a face "
                        f"index on line {whole[i][1]}; give every face of it an index instead")
                if row.face in faces[i]:
                    raise UsageError(f"{self.path}, line {row.line}: face {row.face} of "
                                     f"{row.file!r} is already mapped on line "
                                     f"{faces[i][row.face][1]}")
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
                raise UsageError(f"{p}, line {line}: unknown column(s) {cols}; the header is "
                                 "file,face,subject (face optional)")
            if len(set(header)) != len(header):
                raise UsageError(f"{p}, line {line}: a column is named twice")
            if "file" not in header or "subject" not in header:
                raise UsageError(f"{p}, line {line}: the header needs the columns file and "
                                 "subject (and optionally face)")
            continue
        if len(cells) > len(header):
            raise UsageError(f"{p}, line {line}: {len(cells)} values for {len(header)} columns")
        values = dict(zip(header, [c.strip() for c in cells] + [""] * (len(header) - len(cells)),
                          strict=True))
        file = _key(values["file"])
        if not file:
            raise UsageError(f"{p}, line {line}: empty file")
        if not values["subject"]:
            raise UsageError(f"{p}, line {line}: empty subject for {file!r} (leave the row out "
                             "to treat the face as unnamed)")
        subject = check_subject(values["subject"], where=f"{p}, line {line}")
        assert subject is not None
        face: int | None = None
        if values.get("face"):
            try:
                face = int(values["face"])
            except ValueError as err:
                raise UsageError(f"{p}, line {line}: face must be a whole number >= 0 (0 = the "
                                 f"leftmost face), got {values['face']!r}") from err
            if face < 0:
                raise UsageError(f"{p}, line {line}: face must be >= 0, got {face}")
        if (file, face) in seen:
            what = "it" if face is None else f"face {face} of it"
            raise UsageError(f"{p}, line {line}: {file!r} repeated ({what} is already mapped on "
                             f"line {seen[(file, face)]})")
        if face is None and any(f == file for f, _ in seen):
            first = min(n for (f, _), n in seen.items() if f == file)
            raise UsageError(f"{p}, line {line}: {file!r} has face indices on line {first}; a "
                             "row without an index cannot be mixed with them")
        if face is not None and (file, None) in seen:
            raise UsageError(f"{p}, line {line}: {file!r} is mapped without a face index on "
                             f"line {seen[(file, None)]}; give every face of it an index instead")
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
                problems.append(Problem(str(base / d), "skipped: a symbolic link to a folder "
                                        "(not followed; give its target as an input instead)"))
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
        f"{' '.join(sorted(IMAGE_SUFFIXES))}",
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
            problems.append(Problem(str(p), f"given more than once (as {seen_roots[real]}): "
                                    "processed once"))
            continue
        seen_roots[real] = p
        if p.is_dir():
            if out_real == real:
                raise UsageError(
                    f"the output folder {out_path} is the input folder {p}: outputs would "
                    "overwrite or mix with the originals; choose another -o/--out")
            if _inside(out_real, real):
                raise UsageError(
                    f"the output folder {out_path} is inside the input folder {p}: the next run "
                    "would process the outputs as inputs; choose an -o/--out outside it")
            if _inside(real, out_real):
                raise UsageError(
                    f"the input folder {p} is inside the output folder {out_path}: outputs "
                    "could overwrite originals; choose an -o/--out that does not contain it")
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
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(_unsupported(f))
                continue
            real = os.path.realpath(f)
            if real in by_real:
                problems.append(Problem(str(f), f"the same file as {by_real[real]}: processed "
                                        "once"))
                continue
            by_real[real] = f
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
    planned = Plan(out_path, tuple(images), tuple(problems), names, frozenset(by_real),
                   tuple(sorted({os.path.realpath(r if r.is_dir() else r.parent) for r in roots})))
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
                f"{planned.out / item.output}; rename one of them")
        owners[key] = item
        for parent in PurePosixPath(item.output).parents:
            if str(parent) != ".":
                folders.setdefault(str(parent).casefold(), item)
    for key, item in owners.items():
        if key in folders:
            raise UsageError(
                f"{item.source} would be written to {planned.out / (item.output or '')}, a path "
                f"{folders[key].source} needs as a folder; rename one of them")
    out_real = Path(os.path.realpath(planned.out))
    for item in planned.images:
        assert item.output is not None and item.receipt is not None
        for target in (item.output, item.receipt):
            real = os.path.realpath(out_real / target)
            if real in planned.input_files:
                raise UsageError(
                    f"the input {planned.input_files and _source_of(planned, real)} is where "
                    f"{item.source}'s output {planned.out / target} would be written; choose "
                    "another -o/--out")


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
        raise UsageError(f"cannot write to the output folder {out}: {err.strerror or err}") \
            from err


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
        lines.append(Problem(
            "--budget",
            f"--budget {default.epsilon:g} ignored for existing subject {s} (budget {has}); "
            "change it with `dpface ledger set-budget`"))
    if len(lines) > 6:
        rest = len(lines) - 5
        lines = [*lines[:5], Problem("--budget", f"... and {rest} more existing subject(s) "
                                                 "whose budget differs")]
    return lines


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
) -> BatchSummary:
    """Anonymise every planned photo with ``anonymizer`` and write outputs and receipts.

    ``subject`` names the one person in every photo; ``subject_map`` names faces per photo
    (:func:`read_subject_map`). Photos larger than ``max_megapixels`` (from their header) are
    refused before decoding. ``strict``: a photo in which no face was found is withheld
    instead of written unchanged. ``settings`` are recorded with the run in the ledger;
    ``budget_given``: say when an existing subject keeps a budget other than the ledger's
    default. ``report``: write this run's report into the output folder.
    """
    from .models.images import ImageError, ImageTooLarge, check_pixels, image_size

    ledger = anonymizer.ledger
    subject = check_subject(subject)
    if subject is not None and subject_map is not None:
        raise UsageError("give --subject or --subjects, not both")
    if isinstance(max_megapixels, bool) or not max_megapixels > 0:
        raise UsageError(f"max_megapixels must be > 0, got {max_megapixels!r}")
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
    ledger.record_run(run_settings)
    total = len(planned.images)
    start = time.perf_counter()
    for n, item in enumerate(planned.images):
        if progress is not None:
            progress(n, total, item.name or item.rel)
        where = str(item.source)
        try:
            assert item.output is not None and item.receipt is not None
            target, receipt_path = out / item.output, out / item.receipt
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_dir():
                    raise IsADirectoryError(f"{target} is a folder")
                if not os.access(target.parent, os.W_OK):
                    raise PermissionError(f"{target.parent} is not writable")
            except OSError as err:
                counts["failed"] += 1
                problems.append(Problem(where, f"not processed: its output {target} cannot be "
                                        f"written ({err}); nothing was read or charged"))
                continue
            try:
                check_pixels(image_size(item.source), max_megapixels * 1e6, name=where)
            except ImageTooLarge as err:
                counts["failed"] += 1
                problems.append(Problem(where, f"not processed: {err}; nothing was charged"))
                continue
            except ImageError:
                pass  # unreadable: the anonymiser reports why, with the same words as always
            kwargs = dict(assigned.get(n, {}))
            if subject is not None:
                kwargs["subject"] = subject
            res = anonymizer.anonymize(item.source, name=item.name, **kwargs)
            for stage, sec in res.timings.items():
                stages[stage] += sec
            receipt = _scrub(res.receipt, _replacements(item, roots, planned.names))
            if not res.ok or res.image is None:
                counts["failed"] += 1
                problems.append(Problem(where, res.error or "failed"))
                receipt["output"] = None
                _try_write(receipt_path, receipt)
                continue
            note = res.receipt.get("detection_note")
            if not res.faces:
                counts["no_face"] += 1
                if strict:
                    counts["withheld"] += 1
                    problems.append(Problem(where, "withheld (no face found; --strict): "
                                            + str(note or "the detector found no face")))
                    receipt["output"] = None
                    _try_write(receipt_path, receipt)
                    continue
                problems.append(Problem(where, "written unchanged (no face found): "
                                        + str(note or "the detector found no face")))
            face_counts: Counter[str] = Counter()
            for f in res.faces:
                face_counts["faces"] += 1
                face_counts[f.status] += 1
                if getattr(f, "refused", False):
                    face_counts["refused"] += 1
            charged = sum(1 for f in res.faces if f.ledger_event is not None)
            t = time.perf_counter()
            try:
                write_atomic(target, png_bytes(res.image))
            except OSError as err:
                counts["failed"] += 1
                what = (f"the budget WAS charged ({charged} release(s)) but nothing was "
                        f"written" if charged else "nothing was written (nothing was charged)")
                problems.append(Problem(where, f"{what}: {err}"))
                receipt["output"] = None
                _try_write(receipt_path, receipt)
                continue
            receipt["output"] = item.output
            if not _try_write(receipt_path, receipt):
                problems.append(Problem(where, f"the image was written but its receipt "
                                        f"{receipt_path} could not be"))
            stages["write"] += time.perf_counter() - t
            counts["images"] += 1
            counts.update(face_counts)
        except Exception as err:  # a bug must not lose the rest of the batch
            counts["failed"] += 1
            problems.append(Problem(where, f"{type(err).__name__}: {err} (an internal error; "
                                    "this is a bug, please report it)"))
    elapsed = time.perf_counter() - start
    if progress is not None:
        progress(total, total, "")
    named = set()
    if subject is not None:
        named.add(subject)
    for kw in assigned.values():
        named.update(s for s in ([kw["subject"]] if "subject" in kw else kw["subjects"]) if s)
    if budget_given:
        problems.extend(_budget_notes(ledger, named | set(ledger.subjects(run_id=ledger.run_id))))
    ledger.finish_run({**counts, "inputs": total, "problems": len(problems),
                       "seconds": round(elapsed, 3)})
    report_path: Path | None = None
    if report and str(ledger.path) != ":memory:":
        try:
            report_path = _write_report(ledger, out)
        except OSError as err:
            problems.append(Problem(str(out / REPORT_HTML), f"report not written: {err}"))
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
    )


def _try_write(path: Path, receipt: dict[str, Any]) -> bool:
    try:
        write_atomic(path, (json.dumps(receipt, indent=2, ensure_ascii=False) + "\n").encode())
    except OSError:
        return False
    return True
