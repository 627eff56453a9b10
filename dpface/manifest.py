"""The run manifest: what a job has finished, so a crashed or re-submitted job resumes.

A *job* is the work of writing one output folder with one set of settings. Its manifest lives
in the output folder, under ``OUT/.dpface-job/``:

* ``job.json`` -- the job id (random), a fingerprint of the settings that shape the outputs
  (mechanism and its parameters, detector, encoder, generator, model hashes, names, strict,
  pixel cap), and whether the job finished;
* ``done/<kk>/<key>.json`` -- one small file per finished input, written atomically (temp
  file, fsync, rename) AFTER the input's output and receipt were written: the output's and
  receipt's paths relative to OUT, the output's SHA-256, a keyed digest of the input's bytes
  (HMAC under the ledger's secret: it names no file and cannot be linked to the input without
  the ledger) and the input's counts (faces, replaced, ...). ``key`` is a digest of the
  output's relative path.

Nothing in the manifest names an input: no input path, no file name beyond the output's own
(already in the folder), no EXIF, no subject.

**Resuming** (``dpface anonymize ... --resume``, ``AnonymizeConfig(resume=True)``): the job
recorded in OUT continues when its settings fingerprint matches (otherwise a usage error
before anything is read or charged). An input whose done-file exists, whose input digest
matches and whose output and receipt are still there with the recorded hash is skipped;
every other input is processed again.

**Never charged twice for the same output.** Every fresh release of a job is made with
:meth:`dpface.ledger.Ledger.release_once` under the key ``resume:<job>:<item>:<input
digest>:<face>``: the charge and the drawn value (the privatised identity, or the noisy pixels
of the region -- the release itself, never the raw input or the noise) are committed together
in one ledger transaction, before anything is written. The order for one input is therefore

1. ledger: charge + kept draw (one transaction, per face);
2. output PNG, then its receipt (each atomically);
3. manifest done-file (atomically).

A kill before 1 commits leaves nothing; between 1 and 3 the input is processed again on
resume and every face gets back the value already paid for -- the same output, no new charge
(republishing a release is post-processing); after 3 the input is skipped. A budget still
binds: a value is only ever returned for the exact key it was paid under, and a new key (a new
job, a changed input, another output folder) is charged like any release. When every input of
a job is done, the job's kept values are removed from the ledger (their charges stay).

Without ``resume`` a run into OUT starts a new job: the old job's manifest is cleared and its
kept values are removed from the ledger, and the inputs are released (and charged) again, as
any new release is.

Limits: videos are released by :mod:`dpface.video` track by track without release keys, so a
video interrupted mid-way is charged again when it is processed again (a finished video is
skipped). Pseudonyms (``pseudonym="reuse"``) are idempotent by their own rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = [
    "JOB_DIR",
    "Job",
    "fingerprint",
    "input_digest",
    "item_key",
    "mark_done",
    "read_done",
    "release_key",
    "start",
]

JOB_DIR = ".dpface-job"
SCHEMA = "dpface.job/1"
DONE_SCHEMA = "dpface.job-item/1"
# the settings that shape outputs (from Anonymizer.settings() and the run's own settings)
FINGERPRINT_KEYS = (
    "mechanism",
    "statement",
    "budget_per_release",
    "seeded",
    "detector",
    "encoder",
    "generator",
    "pseudonym",
    "head",
    "linking",
    "attribute_steering",
    "model_hashes",
    "names",
    "strict",
    "max_megapixels",
    "composition",
)


@dataclass(frozen=True)
class Job:
    """The job an output folder belongs to. ``resumed``: it existed before this run."""

    id: str
    out: Path
    resumed: bool

    @property
    def prefix(self) -> str:
        """The start of every release key of this job (``Ledger.forget_draws``)."""
        return f"resume:{self.id}:"


def fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 of the settings that shape the outputs (:data:`FINGERPRINT_KEYS`)."""
    chosen = {k: settings.get(k) for k in FINGERPRINT_KEYS}
    text = json.dumps(chosen, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    from .batch import write_atomic

    write_atomic(path, data)


def _job_file(out: Path) -> Path:
    return out / JOB_DIR / "job.json"


def _read_job(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_job_file(out).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(
            f"the job manifest {_job_file(out)} cannot be read ({err}); remove {out / JOB_DIR} "
            "to start a new job (its outputs will be released and charged again)"
        ) from err
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UsageError(f"{_job_file(out)} is not a dpface job manifest ({SCHEMA})")
    return data


def start(out: Path, settings_fingerprint: str, *, resume: bool, ledger: Ledger) -> Job:
    """The job of this run in ``out``: the recorded one when ``resume`` (and its settings
    match), else a new one (an earlier job's manifest cleared and its kept draws removed from
    ``ledger``). Raises :class:`UsageError` when resuming with other settings."""
    old = _read_job(out)
    if resume and old is not None:
        if old.get("fingerprint") != settings_fingerprint:
            raise UsageError(
                f"--resume: the job in {out} was started with other settings (mechanism, "
                "epsilon, detector, encoder, names...); resume it with the same settings, or "
                "drop --resume to start a new job there (every input is then released and "
                "charged again)"
            )
        job = Job(str(old["job"]), out, True)
        data = {**old, "finished": False, "resumed_at": time.time()}
    else:
        if old is not None and isinstance(old.get("job"), str) and old["job"]:
            ledger.forget_draws(f"resume:{old['job']}:")
        shutil.rmtree(out / JOB_DIR / "done", ignore_errors=True)
        job = Job(uuid.uuid4().hex, out, False)
        data = {
            "schema": SCHEMA,
            "job": job.id,
            "fingerprint": settings_fingerprint,
            "created_at": time.time(),
            "finished": False,
        }
    _write_atomic(_job_file(out), (json.dumps(data, indent=2) + "\n").encode())
    return job


def finish(job: Job, ledger: Ledger, *, complete: bool) -> None:
    """Record the end of this run; when ``complete`` (every input done) the job's kept draws
    are removed from the ledger (nothing can need them again)."""
    data = _read_job(job.out) or {}
    data["finished"] = bool(complete)
    data["finished_at"] = time.time()
    _write_atomic(_job_file(job.out), (json.dumps(data, indent=2) + "\n").encode())
    if complete:
        ledger.forget_draws(job.prefix)


def item_key(output: str) -> str:
    """The manifest's key of one input: a digest of its output's path relative to OUT."""
    return hashlib.sha256(output.encode("utf-8")).hexdigest()[:32]


def input_digest(ledger: Ledger, source: Path) -> str:
    """Keyed digest (the ledger's secret) of the input file's bytes."""
    h = hashlib.sha256()
    with open(source, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return ledger.unit_digest(b"dpface-input:" + h.digest())[:32]


def release_key(job: str, output: str, digest: str) -> str:
    """The release key of one input of a job (faces append ``:<index>``)."""
    return f"resume:{job}:{item_key(output)}:{digest[:16]}"


def _done_file(out: Path, output: str) -> Path:
    key = item_key(output)
    return out / JOB_DIR / "done" / key[:2] / f"{key}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_done(out: Path, output: str, receipt: str, digest: str) -> dict[str, int] | None:
    """The counts recorded for this input when it is finished and intact: its done-file
    exists for this input's bytes, and its output and receipt are in place with the recorded
    hash. None otherwise (it must be processed)."""
    try:
        rec = json.loads(_done_file(out, output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("schema") != DONE_SCHEMA:
        return None
    if rec.get("input") != digest or rec.get("output") != output:
        return None
    if rec.get("receipt") != receipt or not (out / receipt).is_file():
        return None
    try:
        if _sha256(out / output) != rec.get("output_sha256"):
            return None
    except OSError:
        return None
    counts = rec.get("counts")
    if not isinstance(counts, dict):
        return None
    return {str(k): int(v) for k, v in counts.items()}


def mark_done(out: Path, output: str, receipt: str, digest: str, counts: dict[str, int]) -> None:
    """Record one finished input (after its output and receipt were written)."""
    rec = {
        "schema": DONE_SCHEMA,
        "output": output,
        "receipt": receipt,
        "output_sha256": _sha256(out / output),
        "input": digest,
        "counts": {k: int(v) for k, v in counts.items() if v},
        "at": time.time(),
    }
    _write_atomic(_done_file(out, output), (json.dumps(rec) + "\n").encode())


def clean_temp(out: Path, outputs: list[str]) -> int:
    """Remove the hidden temp files (``write_atomic``'s ``.NAME.PID.tmp``) a killed process
    may have left beside the planned outputs; how many."""
    removed = 0
    folders: dict[Path, set[str]] = {}
    for rel in outputs:
        p = out / rel
        folders.setdefault(p.parent, set()).add(p.name)
    for folder, names in folders.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if not (entry.startswith(".") and entry.endswith(".tmp")):
                continue
            base = entry[1:-4].rsplit(".", 1)[0]
            stem = base[: -len(".receipt.json")] if base.endswith(".receipt.json") else base
            if base in names or f"{stem}.png" in names or stem in names:
                try:
                    (folder / entry).unlink()
                    removed += 1
                except OSError:
                    pass
    return removed
