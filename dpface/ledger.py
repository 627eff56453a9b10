"""The privacy ledger: every release is an entry charged to a privacy unit.

One :class:`Ledger`, two backends (:mod:`dpface.ledger_backends`): an SQLite file, the default,
or a PostgreSQL server shared by several machines (a ``postgresql://`` URL). Everything below
holds for both; what differs is how a write transaction excludes the other writers.

What each part guarantees:

* **Budgets bind.** A release is *charged before any noise is drawn*: :meth:`Ledger.charge` and
  :meth:`Ledger.release` open a write transaction (SQLite: ``IMMEDIATE``, the database write
  lock; PostgreSQL: a lock on the subject, then on the chain head), compose
  the subject's committed releases with the new one, and either record the release or record a
  *refusal* and raise :class:`BudgetExceeded`. The check and the write are one transaction, so
  concurrent writers (threads sharing a :class:`Ledger`, other ``Ledger`` objects, other
  processes) can never overspend. A crash after the charge loses nothing: the budget stays spent
  even if the output was never written (the safe direction). Budgets are finite, are created
  once (:meth:`Ledger.set_budget` never changes one silently) and change only through
  :meth:`Ledger.change_budget`, never below what is spent.
* **Privacy units.** A named subject is a person (names are normalised, see
  :func:`normalize_subject`). An unnamed face is the unit :meth:`Ledger.face_unit` returns: a
  keyed digest of the photo's pixels and the face's place in it, so releasing the same photo
  again -- even with another detector -- charges the same unit. Different photos of one unnamed
  person are different units; only naming the person links them.
* **Pseudonyms** (a subject's stored privatised identity) are reused by :meth:`Ledger.release`
  only under the exact key they were released with, only when they came from an unseeded DP
  release, and the decision "reuse or draw a fresh one" is taken inside the write transaction, so
  two concurrent first releases publish one identity, not two.
* **Tamper evidence.** Every entry (release, refusal, budget creation or change) is hash-chained:
  ``hash = sha256(prev_hash || canonical JSON of the entry)``, and the chain's head
  (``"<entries>:<hash>"``) is kept in ``meta`` and updated in the same transaction.
  :meth:`Ledger.verify` recomputes it and says what was edited, deleted or reordered; a write to
  a ledger whose last entry no longer matches its head is refused.
* **Only the ledger is touched.** An existing file is first read without writing anything; it is
  refused (:class:`~dpface.errors.NotALedgerError`) and left byte-identical unless it carries
  dpface's SQLite ``application_id`` and this ``user_version``. An empty file is refused too.
* **No biometrics.** Raw face templates for linking live in a separate file
  (:class:`dpface.linking.TemplateStore`), never in the ledger.

Composition: ``"basic"`` sums epsilons and deltas (always valid); ``"pld"`` composes the events'
dp-accounting privacy-loss distributions and reports epsilon at the budget's delta (tighter for
repeated Gaussian/Laplace releases of one person -- the averaging attack is exactly what it
charges for). Only releases are composed; refusals cost nothing.

SQLite storage: WAL journal, ``synchronous=FULL`` (a committed entry survives a power cut),
foreign keys on. While a ledger is open, committed entries may sit in the ``-wal`` file beside
it: copy a ledger with :meth:`Ledger.backup` (SQLite's online backup), never by copying
``ledger.db`` alone. :meth:`Ledger.close` checkpoints the WAL into the main file. A PostgreSQL
ledger's :meth:`Ledger.backup` writes the same kind of SQLite file, from one snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import numbers
import os
import secrets
import threading
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import platformdirs
from dp_accounting import dp_event

from mechanisms import accounting
from mechanisms.budgets import ZCDP, ApproxDP, Budget, PureDP, compose_basic

from .errors import LedgerError, UsageError
from .ledger_backends import (  # noqa: F401 -- _open_file is dpface.linking's
    APPLICATION_ID,
    ENTRY_COLUMNS,
    SCHEMA_VERSION,
    TEMPLATE_STORE_APPLICATION_ID,
    Backend,
    PostgresBackend,
    _open_file,
    open_backend,
    postgres_url,
)

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "BudgetChangeRefused",
    "BudgetExceeded",
    "Charge",
    "Ledger",
    "Release",
    "Verification",
    "default_ledger_path",
    "event_from_json",
    "event_to_json",
    "normalize_subject",
    "postgres_url",
]

Composition = Literal["basic", "pld"]
EntryKind = Literal["release", "refusal", "budget"]

MAX_SUBJECT_CHARS = 200
FACE_UNIT_IOU = 0.3  # a box overlapping a known face of the same photo this much is that face
GENESIS_HASH = "0" * 64  # prev_hash of the first entry
ENTRY_KINDS: tuple[EntryKind, ...] = ("release", "refusal", "budget")
_PLD_INTERVAL = 1e-3  # PLD value grid of the tight total (see Ledger._compose)
_ZCDP_DELTA = 1e-9  # delta at which a zCDP budget is read as (epsilon, delta)

_ENTRY_COLUMNS = ENTRY_COLUMNS


# ====================================================================== errors
class BudgetExceeded(LedgerError):
    """A release was refused because it would overspend a subject's budget.

    The refusal is recorded in the ledger (an entry of kind ``"refusal"``); nothing was released
    and no noise was drawn.
    """

    def __init__(
        self,
        subject: str,
        budget: ApproxDP,
        spent: ApproxDP,
        would_be: float,
        would_be_delta: float | None = None,
    ) -> None:
        self.subject = subject
        self.budget = budget
        self.spent = spent
        self.would_be = would_be
        self.would_be_delta = would_be_delta
        left = max(budget.epsilon - spent.epsilon, 0.0)
        if (
            would_be_delta is not None
            and would_be_delta > budget.delta
            and would_be <= (budget.epsilon)
        ):
            why = (
                f"this release would bring delta to {would_be_delta:.6g}, over the budget's "
                f"delta={budget.delta:.6g} (epsilon would still fit)"
            )
        else:
            why = f"this release would bring the total to epsilon={would_be:.6g}"
        super().__init__(
            f"subject {subject!r}: {why}; the budget is {budget}, spent so far {spent}, about "
            f"epsilon={left:.6g} left. Nothing was released and no noise was drawn."
        )


class BudgetChangeRefused(LedgerError):
    """A budget change was refused: below what is spent, or attempted silently."""

    def __init__(
        self,
        message: str,
        *,
        subject: str,
        budget: ApproxDP | None,
        requested: ApproxDP,
        spent: ApproxDP | None = None,
    ) -> None:
        self.subject = subject
        self.budget = budget
        self.requested = requested
        self.spent = spent
        super().__init__(message)


# ====================================================================== values
@dataclass(frozen=True)
class Charge:
    """A committed release entry."""

    id: int
    subject: str
    mechanism: str
    budget: ApproxDP
    run_id: str
    created_at: float


@dataclass(frozen=True)
class Release:
    """What :meth:`Ledger.release` published: the vector, and the charge (None when reused)."""

    vector: npt.NDArray[Any]
    charge: Charge | None
    reused: bool
    #: True when :meth:`Ledger.release_once` returned an earlier draw under the same key
    #: (``charge`` is then that earlier, already committed charge)
    resumed: bool = False


@dataclass(frozen=True)
class Verification:
    """The result of :meth:`Ledger.verify`."""

    ok: bool
    entries: int
    head: str  # hex sha256 of the last entry ("" when there is none)
    problems: list[str] = field(default_factory=list)


# ====================================================================== helpers
def normalize_subject(name: str) -> str:
    """The canonical form of a subject name: Unicode NFC, surrounding white space removed.

    So "José" typed with a combining accent and with a precomposed one, or " alice" and "alice",
    are one subject (one budget). Raises :class:`~dpface.errors.UsageError` for a non-string, an
    empty name (an unnamed face is not a subject: see :meth:`Ledger.face_unit`), control or
    invisible format characters, or more than ``MAX_SUBJECT_CHARS`` characters. Case is kept:
    "Alice" and "alice" are different subjects.
    """
    if not isinstance(name, str):
        raise UsageError(f"a subject name must be a string, got {type(name).__name__}")
    out = unicodedata.normalize("NFC", name).strip()
    if not out:
        raise UsageError(
            "a subject name must not be empty; an unnamed face is its own privacy unit "
            "(leave the name out instead of passing an empty one)"
        )
    for ch in out:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ch not in "\u200c\u200d"):
            raise UsageError(
                f"subject name {out!r} contains the control or invisible character "
                f"U+{ord(ch):04X}; use printable characters only"
            )
    if len(out) > MAX_SUBJECT_CHARS:
        raise UsageError(
            f"a subject name has at most {MAX_SUBJECT_CHARS} characters, got {len(out)}"
        )
    return out


def default_ledger_path() -> Path:
    """``$DPFACE_LEDGER`` if set, else ``ledger.db`` in the user's data folder for dpface."""
    env = os.environ.get("DPFACE_LEDGER", "")
    if env.strip():
        return Path(env).expanduser()
    return platformdirs.user_data_path("dpface") / "ledger.db"


def event_to_json(event: dp_event.DpEvent) -> str:
    """Serialise a dp-accounting event (immutable attrs classes) to JSON."""
    return json.dumps(_event_to_dict(event), sort_keys=True)


def _event_to_dict(value: Any) -> Any:
    if isinstance(value, dp_event.DpEvent):
        names = [a.name for a in type(value).__attrs_attrs__]
        fields = {name: _event_to_dict(getattr(value, name)) for name in names}
        return {"__event__": type(value).__name__, **fields}
    if isinstance(value, (list, tuple)):
        return [_event_to_dict(v) for v in value]
    return value


def event_from_json(text: str) -> dp_event.DpEvent:
    """Inverse of :func:`event_to_json`."""
    result = _event_from_obj(json.loads(text))
    if not isinstance(result, dp_event.DpEvent):
        raise ValueError("not a serialised dp event")
    return result


def _event_from_obj(value: Any) -> Any:
    if isinstance(value, dict) and "__event__" in value:
        cls = getattr(dp_event, value["__event__"])
        kwargs = {k: _event_from_obj(v) for k, v in value.items() if k != "__event__"}
        return cls(**kwargs)
    if isinstance(value, list):
        return [_event_from_obj(v) for v in value]
    return value


def _finite_budget(budget: Budget, what: str) -> ApproxDP:
    """``budget`` as (epsilon, delta); ValueError unless it is a finite budget."""
    if not isinstance(budget, (PureDP, ApproxDP, ZCDP)):
        raise TypeError(f"{what} must be a PureDP, ApproxDP or ZCDP, got {type(budget).__name__}")
    if isinstance(budget, ZCDP):
        if not math.isfinite(budget.rho):
            raise ValueError(f"{what} must be finite: an infinite budget means no privacy at all")
        approx = budget.to_approx(_ZCDP_DELTA)
    elif isinstance(budget, PureDP):
        approx = budget.to_approx()
    else:
        approx = budget
    if not math.isfinite(approx.epsilon):
        raise ValueError(
            f"{what} must be finite: {budget} means no privacy at all, which the ledger never "
            "records"
        )
    return ApproxDP(approx.epsilon, approx.delta)


def _canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _entry_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    data = prev_hash.encode("ascii") + _canonical_json(fields).encode("ascii")
    return hashlib.sha256(data).hexdigest()


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _check_box(box: Iterable[Any]) -> tuple[int, int, int, int]:
    values = tuple(box)
    if len(values) != 4 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
        for v in values
    ):
        raise UsageError(f"a face box is four finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (round(float(v)) for v in values)
    if x1 <= x0 or y1 <= y0:
        raise UsageError(f"a face box needs x1 > x0 and y1 > y0, got {box!r}")
    return x0, y0, x1, y1


def _parse_head(value: str | None) -> tuple[int, str]:
    """The chain head ``"<entries>:<hash>"`` as (entries, hash); entries -1 when unreadable."""
    if value is None:
        return -1, ""
    count, _, digest = value.partition(":")
    try:
        return int(count), digest
    except ValueError:
        return -1, digest


def _new_meta() -> list[tuple[str, str]]:
    """The meta rows of a new ledger: its unit secret, an empty chain, when it was made."""
    return [
        ("secret", secrets.token_bytes(32).hex()),
        ("head", "0:"),
        ("created_at", repr(time.time())),
    ]


# ====================================================================== the ledger
class Ledger:
    """Per-subject privacy budgets and the hash-chained entries that spend them.

    ``path`` is a file (created with its folder when missing, unless ``create=False``) or
    ``":memory:"`` -- an SQLite ledger, the default -- or a ``postgresql://`` URL: a ledger
    shared by several machines in the connection's current schema of a PostgreSQL database
    (created there when the schema is empty, unless ``create=False``; needs
    ``pip install 'dpface[postgres]'``). Both behave the same; see
    :mod:`dpface.ledger_backends` for how each keeps concurrent writers apart. An existing file
    or schema is refused unless it is a dpface ledger of this schema version, and is then left
    untouched. ``default_budget`` (finite) is given to a subject on its first charge when it has
    none. One object may be shared by threads; every method is serialised.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        default_budget: Budget | None = None,
        composition: Composition = "basic",
        timeout: float = 60.0,
        create: bool = True,
    ) -> None:
        if composition not in ("basic", "pld"):
            raise ValueError(f"composition must be 'basic' or 'pld', got {composition!r}")
        self.default_budget: ApproxDP | None = (
            None if default_budget is None else _finite_budget(default_budget, "default_budget")
        )
        self.composition: Composition = composition
        self.run_id = uuid.uuid4().hex
        self._lock = threading.RLock()
        self._closed = False
        self._timeout = timeout
        self._db: Backend = open_backend(path, create=create, timeout=timeout, meta=_new_meta)
        #: where the ledger is: a Path (SQLite) or the URL without its password (PostgreSQL)
        self.path: Path | str = self._db.where
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key='secret'").fetchone()
            if row is None or len(bytes.fromhex(str(row[0]))) != 32:
                raise LedgerError(f"{self.path} has no valid unit secret; it is damaged")
            self._secret = bytes.fromhex(str(row[0]))
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def connect(cls, location: str | Path, **options: Any) -> Ledger:
        """Open the ledger at ``location`` -- a ``postgresql://`` URL or an SQLite file -- with
        the constructor's keyword options (the same as ``Ledger(location, ...)``)."""
        return cls(location, **options)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.dialect

    @property
    def _conn(self) -> Any:
        """The backend's own connection (sqlite3 or psycopg), for tests and tools."""
        return self._db.raw

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _transaction(self, unit: str | None = None) -> Iterator[Backend]:
        """One write transaction; ``unit``: the privacy unit (or photo) it decides about, which
        no other writer may decide about meanwhile."""
        with self._lock:
            self._check_open()
            self._db.begin_write()
            try:
                if unit is not None:
                    self._db.lock_unit(unit)
                yield self._db
            except BaseException:
                with contextlib.suppress(Exception):  # keep the original error
                    self._db.rollback()
                raise
            else:
                self._db.commit()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Backend]:
        """One consistent snapshot for several reads."""
        with self._lock:
            self._check_open()
            self._db.begin_read()
            try:
                yield self._db
            finally:
                self._db.commit()

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"the ledger {self.path} is closed")

    def close(self) -> None:
        """Close; an SQLite ledger first checkpoints its WAL into the main file (so the file
        alone holds everything)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ units
    def unit_digest(self, data: bytes) -> str:
        """HMAC-SHA256 of ``data`` under this ledger's secret, hex (a keyed, unlinkable digest)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"unit_digest needs bytes, got {type(data).__name__}")
        return hmac.new(self._secret, bytes(data), hashlib.sha256).hexdigest()

    def face_unit(self, photo_digest: str, box: tuple[int, int, int, int]) -> str:
        """The privacy unit of an UNNAMED face at ``box`` (x0, y0, x1, y1) in a photo.

        ``photo_digest`` identifies the photo (:meth:`unit_digest` of its decoded pixels). A face
        of that photo seen before whose box overlaps this one (IoU >= ``FACE_UNIT_IOU``, best
        overlap wins) is the same unit; otherwise a new unit is made and its box remembered. So
        re-running on the same photo charges the same units, while other photos of the same
        person are other units.
        """
        if not isinstance(photo_digest, str) or not photo_digest:
            raise UsageError("photo_digest must be a non-empty string (a unit_digest)")
        b = _check_box(box)
        self._db.check_text(photo_digest, "photo_digest")
        with self._transaction(unit=f"photo:{photo_digest}") as con:
            best: tuple[float, int, str] | None = None
            count = 0
            for unit, n, x0, y0, x1, y1 in con.execute(
                "SELECT unit, n, x0, y0, x1, y1 FROM face_units WHERE photo=? ORDER BY n",
                (photo_digest,),
            ):
                count += 1
                iou = _iou(b, (x0, y0, x1, y1))
                if iou >= FACE_UNIT_IOU and (best is None or iou > best[0]):
                    best = (iou, n, unit)
            if best is not None:
                return best[2]
            unit = "face:" + self.unit_digest(f"{photo_digest}:{count}".encode())[:20]
            con.execute(
                "INSERT INTO face_units(unit, photo, n, x0, y0, x1, y1, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (unit, photo_digest, count, *b, time.time()),
            )
            return unit

    # ------------------------------------------------------------------ the chain
    def _append(
        self,
        *,
        kind: EntryKind,
        subject: str,
        mechanism: str,
        cost: ApproxDP,
        dp_json: str,
        note: str,
        seeded: bool,
        is_dp: bool,
        now: float,
    ) -> int:
        """Append one entry to the chain (inside a write transaction); its id."""
        head_value, last = self._db.chain_tip()  # locks the chain head for this transaction
        count, head = _parse_head(head_value)
        if (last is None and count != 0) or (
            last is not None and (last[0] != count or last[1] != head)
        ):
            raise LedgerError(
                f"the ledger {self.path} was altered outside dpface: its last entry does not "
                "match the chain head (entries deleted or edited). Nothing was recorded; run "
                "Ledger.verify() for details and restore it from a backup"
            )
        fields: dict[str, Any] = {
            "id": count + 1,
            "kind": kind,
            "subject": subject,
            "mechanism": mechanism,
            "epsilon": cost.epsilon,
            "delta": cost.delta,
            "dp_event": dp_json,
            "run_id": self.run_id,
            "note": note,
            "seeded": bool(seeded),
            "is_dp": bool(is_dp),
            "created_at": now,
        }
        prev = head if count else GENESIS_HASH
        digest = _entry_hash(prev, fields)
        self._db.write_entry(
            (*_ENTRY_COLUMNS, "prev_hash", "hash"),
            (*[fields[c] for c in _ENTRY_COLUMNS], prev, digest),
            f"{count + 1}:{digest}",
        )
        return count + 1

    def _head(self) -> tuple[int, str]:
        row = self._db.execute("SELECT value FROM meta WHERE key='head'").fetchone()
        return _parse_head(None if row is None else str(row[0]))

    # ------------------------------------------------------------------ budgets
    def _budget_row(self, subject: str) -> ApproxDP | None:
        row = self._db.execute(
            "SELECT budget_epsilon, budget_delta FROM subjects WHERE subject=?", (subject,)
        ).fetchone()
        return None if row is None else ApproxDP(row[0], row[1])

    def _create_subject(self, subject: str, total: ApproxDP, how: str, note: str) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO subjects(subject, budget_epsilon, budget_delta, created_at) "
            "VALUES (?, ?, ?, ?)",
            (subject, total.epsilon, total.delta, now),
        )
        self._append(
            kind="budget",
            subject=subject,
            mechanism=how,
            cost=total,
            dp_json="",
            note=note,
            seeded=False,
            is_dp=False,
            now=now,
        )

    def set_budget(self, subject: str, budget: Budget) -> None:
        """Create ``subject`` with ``budget``; a no-op if it already has exactly this budget.

        A different existing budget raises :class:`BudgetChangeRefused`: budgets are never
        changed silently; use :meth:`change_budget`.
        """
        subject = normalize_subject(subject)
        total = _finite_budget(budget, "budget")
        with self._transaction(unit=subject):
            current = self._budget_row(subject)
            if current is None:
                self._create_subject(subject, total, "budget:create", "")
                return
            if (current.epsilon, current.delta) == (total.epsilon, total.delta):
                return
            raise BudgetChangeRefused(
                f"subject {subject!r} already has the budget {current}; set_budget() does not "
                f"change it to {total}. To change a budget on purpose call "
                f"change_budget({subject!r}, budget, reason=...): the change is recorded in the "
                "ledger",
                subject=subject,
                budget=current,
                requested=total,
            )

    def change_budget(self, subject: str, budget: Budget, *, reason: str = "") -> None:
        """Change ``subject``'s total budget on purpose (recorded in the chain with ``reason``).

        Never below what is already spent (:class:`BudgetChangeRefused`). A subject without a
        budget is created with this one; the same budget again records nothing.
        """
        subject = normalize_subject(subject)
        total = _finite_budget(budget, "budget")
        if not isinstance(reason, str):
            raise UsageError("reason must be a string")
        self._db.check_text(reason, "reason")
        with self._transaction(unit=subject) as con:
            current = self._budget_row(subject)
            if current is None:
                self._create_subject(subject, total, "budget:create", reason)
                return
            if (current.epsilon, current.delta) == (total.epsilon, total.delta):
                return
            spent = self._compose(self._release_rows(subject), total.delta)
            if spent.epsilon > total.epsilon or spent.delta > total.delta:
                raise BudgetChangeRefused(
                    f"subject {subject!r} has already spent {spent}; its budget cannot become "
                    f"{total} (a budget is never set below what is spent). It stays {current}",
                    subject=subject,
                    budget=current,
                    requested=total,
                    spent=spent,
                )
            con.execute(
                "UPDATE subjects SET budget_epsilon=?, budget_delta=? WHERE subject=?",
                (total.epsilon, total.delta, subject),
            )
            self._append(
                kind="budget",
                subject=subject,
                mechanism="budget:change",
                cost=total,
                dp_json="",
                note=reason,
                seeded=False,
                is_dp=False,
                now=time.time(),
            )

    def budget(self, subject: str) -> ApproxDP | None:
        """The subject's total budget (None when it has none yet)."""
        subject = normalize_subject(subject)
        with self._lock:
            self._check_open()
            return self._budget_row(subject)

    def subjects(self, *, run_id: str | None = None) -> list[str]:
        """All subjects, or those with a release or refusal in run ``run_id``; sorted."""
        with self._lock:
            self._check_open()
            if run_id is None:
                rows = self._db.execute("SELECT subject FROM subjects ORDER BY subject")
            else:
                rows = self._db.execute(
                    "SELECT DISTINCT subject FROM entries WHERE run_id=? AND kind IN "
                    "('release', 'refusal') ORDER BY subject",
                    (run_id,),
                )
            return [str(r[0]) for r in rows]

    def events(
        self,
        subject: str | None = None,
        *,
        run_id: str | None = None,
        kinds: Iterable[str] = ("release",),
    ) -> list[dict[str, Any]]:
        """Entries oldest first, filtered by subject, run and kind (releases by default).

        Each is a dict with ``id, kind, subject, mechanism, epsilon, delta, dp_event, run_id,
        note, seeded, is_dp, created_at, hash``. A budget entry's epsilon/delta are the new
        total budget; a refusal's are what the refused release would have cost.
        """
        wanted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        bad = [k for k in wanted if k not in ENTRY_KINDS]
        if bad or not wanted:
            raise UsageError(f"kinds must be some of {ENTRY_KINDS}, got {wanted!r}")
        where = [f"kind IN ({', '.join('?' * len(wanted))})"]
        args: list[Any] = list(wanted)
        if subject is not None:
            where.append("subject=?")
            args.append(normalize_subject(subject))
        if run_id is not None:
            where.append("run_id=?")
            args.append(run_id)
        cols = (*_ENTRY_COLUMNS, "hash")
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                f"SELECT {', '.join(cols)} FROM entries WHERE {' AND '.join(where)} ORDER BY id",
                args,
            ).fetchall()
        out = []
        for row in rows:
            entry = dict(zip(cols, row, strict=True))
            entry["seeded"] = bool(entry["seeded"])
            entry["is_dp"] = bool(entry["is_dp"])
            out.append(entry)
        return out

    # ------------------------------------------------------------------ spending
    def _release_rows(self, subject: str) -> list[tuple[float, float, str]]:
        return [
            (float(e), float(d), str(j))
            for e, d, j in self._db.execute(
                "SELECT epsilon, delta, dp_event FROM entries WHERE subject=? AND kind='release' "
                "ORDER BY id",
                (subject,),
            )
        ]

    def _compose(self, rows: list[tuple[float, float, str]], delta: float) -> ApproxDP:
        """Total loss of the rows: basic sum, or PLD at ``delta`` when that is smaller."""
        if not rows:
            return ApproxDP(0.0, 0.0)
        basic = compose_basic([ApproxDP(e, d) for e, d, _ in rows])
        if not isinstance(basic, ApproxDP):  # pragma: no cover - compose_basic of ApproxDP
            raise TypeError(
                "basic composition of (epsilon, delta) budgets must be (epsilon, delta)"
            )
        if self.composition == "basic" or delta <= 0.0:
            return basic
        # identical events (the common case: one mechanism, many releases) are self-composed,
        # which dp-accounting does by repeated squaring instead of one convolution each
        counts = Counter(j for _, _, j in rows)
        events = [
            event_from_json(j) if c == 1 else accounting.self_compose(event_from_json(j), c)
            for j, c in counts.items()
        ]
        try:
            # a coarser grid than dp-accounting's default keeps a charge under a second; the
            # PLD is still the pessimistic (upper-bound) discretisation, so this only costs
            # tightness (measured: < 1e-6 relative on Gaussian releases)
            tight = accounting.pld_epsilon(
                accounting.compose(events), delta, value_discretization_interval=_PLD_INTERVAL
            )
        except (ValueError, TypeError, NotImplementedError):
            return basic  # an event the PLD accountant cannot handle: basic is still sound
        return ApproxDP(tight, delta) if tight < basic.epsilon else basic

    def spent(self, subject: str) -> ApproxDP:
        """What the subject's releases have spent, composed with the ledger's rule."""
        subject = normalize_subject(subject)
        with self._reading():
            budget = self._budget_row(subject)
            delta = budget.delta if budget is not None else 0.0
            return self._compose(self._release_rows(subject), delta)

    def remaining(self, subject: str) -> float:
        """Epsilon left (at the budget's delta); inf for an unknown subject without a default."""
        subject = normalize_subject(subject)
        with self._reading():
            budget = self._budget_row(subject) or self.default_budget
            if budget is None:
                return math.inf
            spent = self._compose(self._release_rows(subject), budget.delta)
        return max(budget.epsilon - spent.epsilon, 0.0)

    def _ensure_subject(self, subject: str) -> ApproxDP:
        """The subject's total budget, creating it with the default (inside a transaction)."""
        current = self._budget_row(subject)
        if current is not None:
            last = self._db.execute(
                "SELECT epsilon, delta FROM entries WHERE subject=? AND kind='budget' "
                "ORDER BY id DESC LIMIT 1",
                (subject,),
            ).fetchone()
            if last is None or (last[0], last[1]) != (current.epsilon, current.delta):
                raise LedgerError(
                    f"the budget of subject {subject!r} in {self.path} does not match its last "
                    "budget entry: it was changed outside dpface. Nothing was recorded; run "
                    "Ledger.verify() for details and restore the ledger from a backup"
                )
            return current
        if self.default_budget is None:
            raise KeyError(
                f"subject {subject!r} has no budget; call set_budget() first or open "
                "the ledger with default_budget="
            )
        self._create_subject(subject, self.default_budget, "budget:default", "default budget")
        return self.default_budget

    def _try_charge(
        self,
        subject: str,
        *,
        mechanism: str,
        cost: ApproxDP,
        payload: str,
        note: str,
        seeded: bool,
        is_dp: bool,
    ) -> Charge | BudgetExceeded:
        """Inside a write transaction: record the release, or record a refusal."""
        total = self._ensure_subject(subject)
        rows = self._release_rows(subject)
        spent = self._compose(rows, total.delta)
        after = self._compose([*rows, (cost.epsilon, cost.delta, payload)], total.delta)
        now = time.time()
        if after.epsilon > total.epsilon or after.delta > total.delta:
            self._append(
                kind="refusal",
                subject=subject,
                mechanism=mechanism,
                cost=cost,
                dp_json=payload,
                note=note,
                seeded=seeded,
                is_dp=is_dp,
                now=now,
            )
            return BudgetExceeded(subject, total, spent, after.epsilon, after.delta)
        entry_id = self._append(
            kind="release",
            subject=subject,
            mechanism=mechanism,
            cost=cost,
            dp_json=payload,
            note=note,
            seeded=seeded,
            is_dp=is_dp,
            now=now,
        )
        return Charge(entry_id, subject, mechanism, cost, self.run_id, now)

    def _charge_args(
        self, mechanism: str, budget: Budget, event: dp_event.DpEvent, note: str
    ) -> tuple[ApproxDP, str]:
        if not isinstance(mechanism, str) or not mechanism:
            raise UsageError("mechanism must be a non-empty string")
        if not isinstance(note, str):
            raise UsageError("note must be a string")
        self._db.check_text(mechanism, "mechanism")
        self._db.check_text(note, "note")
        return _finite_budget(budget, "a release's budget"), event_to_json(event)

    def charge(
        self,
        subject: str,
        *,
        mechanism: str,
        budget: Budget,
        event: dp_event.DpEvent,
        note: str = "",
        seeded: bool = False,
        is_dp: bool = True,
    ) -> Charge:
        """Atomically check the subject's budget and record one release (before any noise).

        If it does not fit, a refusal entry is committed and :class:`BudgetExceeded` raised.
        An unknown subject gets the default budget, or raises ``KeyError`` without one.
        """
        subject = normalize_subject(subject)
        cost, payload = self._charge_args(mechanism, budget, event, note)
        with self._transaction(unit=subject):
            result = self._try_charge(
                subject,
                mechanism=mechanism,
                cost=cost,
                payload=payload,
                note=note,
                seeded=seeded,
                is_dp=is_dp,
            )
        if isinstance(result, BudgetExceeded):
            raise result
        return result

    def release(
        self,
        subject: str,
        *,
        key: str | None,
        mechanism: str,
        budget: Budget,
        event: dp_event.DpEvent,
        note: str = "",
        seeded: bool = False,
        is_dp: bool = True,
        draw: Callable[[], npt.ArrayLike],
    ) -> Release:
        """Publish one privatised value for ``subject``, reusing its pseudonym where allowed.

        Decided in ONE write transaction: when ``key`` is given, the release is unseeded DP and
        a pseudonym ``(subject, key)`` exists, it is returned and nothing is charged. Otherwise
        the budget is checked (a refusal is recorded and :class:`BudgetExceeded` raised), the
        release entry written, ``draw()`` called for the value, and -- for an unseeded DP release
        with a key -- the value kept as the pseudonym; then the transaction commits. If
        ``draw()`` raises, everything rolls back. Seeded or non-DP values are never stored.
        ``draw`` runs under the ledger's write lock: keep it short and do not use the ledger in it.
        """
        subject = normalize_subject(subject)
        if key is not None and (not isinstance(key, str) or not key):
            raise UsageError("a pseudonym key must be a non-empty string (or None)")
        cost, payload = self._charge_args(mechanism, budget, event, note)
        if key is not None:
            self._db.check_text(key, "a pseudonym key")
        store_as = key if key is not None and not seeded and is_dp else None
        with self._transaction(unit=subject) as con:
            if store_as is not None:
                stored = self._pseudonym_row(subject, store_as)
                if stored is not None:
                    return Release(stored, None, True)
            charged = self._charge_and_draw(
                con,
                subject,
                keep_as=store_as,
                what="a pseudonym",
                mechanism=mechanism,
                cost=cost,
                payload=payload,
                note=note,
                seeded=seeded,
                is_dp=is_dp,
                draw=draw,
            )
        if isinstance(charged, BudgetExceeded):
            raise charged  # the refusal entry is committed
        return Release(charged[1], charged[0], False)

    def release_once(
        self,
        subject: str,
        *,
        key: str,
        mechanism: str,
        budget: Budget,
        event: dp_event.DpEvent,
        note: str = "",
        seeded: bool = False,
        is_dp: bool = True,
        draw: Callable[[], npt.ArrayLike],
    ) -> Release:
        """Publish one privatised value for ``subject`` under a release ``key`` at most once.

        For resumable jobs (:mod:`dpface.manifest`): ``key`` names ONE output (a job, an item,
        a face). Decided in one write transaction: if a value was already drawn for
        ``(subject, key)`` it is returned with the charge that paid for it (``resumed=True``)
        and nothing is charged; otherwise the budget is checked (a refusal is recorded and
        :class:`BudgetExceeded` raised), the release recorded, ``draw()`` called and its value
        kept under the key, all committed together. So a job killed after the charge but before
        its output was written republishes exactly the value that was paid for (the same
        release: post-processing, no further loss) instead of paying again, and a value is
        never kept without its charge nor a charge committed without its value. The kept value
        is itself the DP release (never the raw input or the noise); :meth:`forget_draws`
        removes a finished job's values. Release keys never serve as pseudonyms of other
        photos (``key`` must start with ``"resume:"``)."""
        subject = normalize_subject(subject)
        if not isinstance(key, str) or not key.startswith("resume:"):
            raise UsageError("a release key must be a string starting with 'resume:'")
        cost, payload = self._charge_args(mechanism, budget, event, note)
        self._db.check_text(key, "a release key")
        with self._transaction(unit=subject) as con:
            stored = self._pseudonym_row(subject, key)
            if stored is not None:
                row = con.execute(
                    "SELECT e.id, e.mechanism, e.epsilon, e.delta, e.run_id, e.created_at "
                    "FROM pseudonyms p JOIN entries e ON e.id = p.entry_id "
                    "WHERE p.subject=? AND p.key=?",
                    (subject, key),
                ).fetchone()
                if row is None:
                    raise LedgerError(
                        f"the draw kept under {key!r} has no release entry: the ledger "
                        f"{self.path} was altered outside dpface"
                    )
                earlier = Charge(
                    int(row[0]),
                    subject,
                    str(row[1]),
                    ApproxDP(float(row[2]), float(row[3])),
                    str(row[4]),
                    float(row[5]),
                )
                return Release(stored, earlier, False, resumed=True)
            charged = self._charge_and_draw(
                con,
                subject,
                keep_as=key,
                what="a kept draw",
                mechanism=mechanism,
                cost=cost,
                payload=payload,
                note=note,
                seeded=seeded,
                is_dp=is_dp,
                draw=draw,
            )
        if isinstance(charged, BudgetExceeded):
            raise charged  # the refusal entry is committed
        return Release(charged[1], charged[0], False)

    def _charge_and_draw(
        self,
        con: Any,
        subject: str,
        *,
        keep_as: str | None,
        what: str,
        mechanism: str,
        cost: ApproxDP,
        payload: str,
        note: str,
        seeded: bool,
        is_dp: bool,
        draw: Callable[[], npt.ArrayLike],
    ) -> tuple[Charge, npt.NDArray[Any]] | BudgetExceeded:
        """Inside an open write transaction (shared by :meth:`release` and
        :meth:`release_once`): record the charge -- or the refusal, returned, with nothing
        drawn -- then call ``draw()`` and, with ``keep_as``, keep the value under that key
        beside the charge's entry id, so a kept value never exists without its charge. If
        ``draw()`` raises, the caller's transaction rolls the charge back."""
        result = self._try_charge(
            subject,
            mechanism=mechanism,
            cost=cost,
            payload=payload,
            note=note,
            seeded=seeded,
            is_dp=is_dp,
        )
        if isinstance(result, BudgetExceeded):
            return result
        value = np.asarray(draw())
        if keep_as is not None:
            if value.dtype.kind not in "biuf":
                raise TypeError(f"{what} must be numeric, got {value.dtype}")
            value = np.ascontiguousarray(value)
            con.execute(
                "INSERT INTO pseudonyms(subject, key, vector, dtype, shape, entry_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    subject,
                    keep_as,
                    value.tobytes(),
                    value.dtype.str,
                    json.dumps(value.shape),
                    result.id,
                    result.created_at,
                ),
            )
        return result, value

    def forget_draws(self, prefix: str) -> int:
        """Remove the values :meth:`release_once` kept under keys starting with ``prefix``
        (a finished job's ``"resume:<job>:"``); their charges stay. How many were removed."""
        if not isinstance(prefix, str) or not prefix.startswith("resume:") or len(prefix) < 12:
            raise UsageError("forget_draws needs a job's release-key prefix ('resume:<job>:')")
        self._db.check_text(prefix, "a release key prefix")
        pattern = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        with self._transaction() as con:
            cur = con.execute("DELETE FROM pseudonyms WHERE key LIKE ? ESCAPE '!'", (pattern,))
            return int(getattr(cur, "rowcount", 0) or 0)

    # ------------------------------------------------------------------ pseudonyms
    def _pseudonym_row(self, subject: str, key: str) -> npt.NDArray[Any] | None:
        row = self._db.execute(
            "SELECT vector, dtype, shape FROM pseudonyms WHERE subject=? AND key=?",
            (subject, key),
        ).fetchone()
        if row is None:
            return None
        flat = np.frombuffer(row[0], dtype=np.dtype(str(row[1])))
        return flat.reshape(tuple(json.loads(row[2]))).copy()

    def pseudonym(self, subject: str, key: str) -> npt.NDArray[Any] | None:
        """The stored privatised identity for (subject, key), if any."""
        subject = normalize_subject(subject)
        with self._lock:
            self._check_open()
            return self._pseudonym_row(subject, key)

    # ------------------------------------------------------------------ runs
    def record_run(self, settings: dict[str, Any]) -> None:
        """Record that run :attr:`run_id` started, with its settings (any JSON-able dict)."""
        text = json.dumps(settings, sort_keys=True, default=str)
        with self._transaction() as con:
            con.execute(
                "INSERT INTO runs(run_id, started_at, settings) VALUES (?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET settings=excluded.settings",
                (self.run_id, time.time(), text),
            )

    def finish_run(self, summary: dict[str, Any]) -> None:
        """Record that run :attr:`run_id` finished, with its summary (counts...)."""
        text = json.dumps(summary, sort_keys=True, default=str)
        with self._transaction() as con:
            con.execute(
                "INSERT INTO runs(run_id, finished_at, summary) VALUES (?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET finished_at=excluded.finished_at, "
                "summary=excluded.summary",
                (self.run_id, time.time(), text),
            )

    def runs(self) -> list[dict[str, Any]]:
        """Every recorded run, oldest first: run_id, started_at, finished_at, settings, summary."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT run_id, started_at, finished_at, settings, summary FROM runs "
                f"ORDER BY {self._db.runs_order}"
            ).fetchall()
        return [
            {
                "run_id": r[0],
                "started_at": r[1],
                "finished_at": r[2],
                "settings": None if r[3] is None else json.loads(r[3]),
                "summary": None if r[4] is None else json.loads(r[4]),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ integrity
    def verify(self) -> Verification:
        """Recompute the hash chain and say what, if anything, was altered and where."""
        problems: list[str] = []
        with self._reading() as con:
            rows = con.execute(
                f"SELECT {', '.join(_ENTRY_COLUMNS)}, prev_hash, hash FROM entries ORDER BY id"
            ).fetchall()
            head_count, head_hash = self._head()
            budgets = {
                str(s): (e, d)
                for s, e, d in con.execute(
                    "SELECT subject, budget_epsilon, budget_delta FROM subjects"
                )
            }
            pseudonyms = con.execute("SELECT subject, key, entry_id FROM pseudonyms").fetchall()
        prev = GENESIS_HASH
        last_budget: dict[str, tuple[Any, Any]] = {}
        releases: dict[int, str] = {}
        for position, row in enumerate(rows, start=1):
            fields = dict(zip(_ENTRY_COLUMNS, row[: len(_ENTRY_COLUMNS)], strict=True))
            stored_prev, stored_hash = row[len(_ENTRY_COLUMNS) :]
            eid = fields["id"]
            if eid != position:
                problems.append(
                    f"entry {eid} is at position {position}: entries are missing before it "
                    "(deleted) or were renumbered"
                )
            if stored_prev != prev:
                problems.append(
                    f"entry {eid}: its prev_hash does not link to the entry before it "
                    "(entries deleted, inserted or reordered)"
                )
            for flag in ("seeded", "is_dp"):
                if fields[flag] not in (0, 1):
                    problems.append(f"entry {eid}: {flag} is {fields[flag]!r}, not 0 or 1")
                fields[flag] = bool(fields[flag])
            try:
                recomputed = _entry_hash(stored_prev, fields)
            except (TypeError, ValueError):
                recomputed = ""
            if recomputed != stored_hash:
                problems.append(
                    f"entry {eid} ({fields['kind']}, subject {fields['subject']!r}): its content "
                    "does not match its hash (a field was edited)"
                )
            subject = str(fields["subject"])
            if fields["kind"] == "budget":
                last_budget[subject] = (fields["epsilon"], fields["delta"])
            elif subject not in last_budget:
                problems.append(f"entry {eid}: subject {subject!r} has no budget entry before it")
            if fields["kind"] == "release":
                releases[int(eid)] = subject
            prev = str(stored_hash)
        head = str(rows[-1][-1]) if rows else ""
        if (head_count, head_hash) != (len(rows), head):
            problems.append(
                f"the chain head says {head_count} entries ending in {head_hash[:12] or '-'}..., "
                f"the table has {len(rows)} ending in {head[:12] or '-'}... (the last entries "
                "were deleted, or the head was edited)"
            )
        for subject in sorted(set(budgets) | set(last_budget)):
            row_budget = budgets.get(subject)
            entry_budget = last_budget.get(subject)
            if row_budget is None:
                problems.append(f"subject {subject!r} has budget entries but no budget row")
            elif entry_budget is None:
                problems.append(f"subject {subject!r} has a budget row but no budget entry")
            elif row_budget != entry_budget:
                problems.append(
                    f"subject {subject!r}: its budget row {row_budget} differs from its last "
                    f"budget entry {entry_budget} (the budget was edited outside dpface)"
                )
        for subject, key, entry_id in pseudonyms:
            if releases.get(int(entry_id)) != subject:
                problems.append(
                    f"pseudonym ({subject!r}, {key!r}) does not come from a release of that "
                    f"subject (entry {entry_id})"
                )
        return Verification(not problems, len(rows), head, problems)

    def backup(self, dest: str | Path) -> Path | str:
        """A complete, consistent copy of this ledger at ``dest``: a new SQLite ledger file, or
        an empty schema of a PostgreSQL database (a ``postgresql://`` URL); never over an
        existing file or a non-empty schema (``FileExistsError``).

        The copy has the same entries, hash chain, budgets, pseudonyms, face units, runs and
        unit secret, so it verifies with the same head and names unnamed faces as this ledger
        does: back a PostgreSQL ledger up into a file, or move a local ledger onto a server.
        An SQLite ledger is copied to a file with SQLite's online backup (entries still in the
        WAL included), anything else from one snapshot; a file copy is built under a temporary
        name and linked into place, a PostgreSQL copy is written in one transaction, so neither
        is ever partial. Returns the copy's location.
        """
        url = postgres_url(dest)
        with self._lock:
            self._check_open()
            if url is None:
                return self._db.backup(Path(dest).expanduser())
            rows = self._db.snapshot()
        copy = PostgresBackend(url, create=True, timeout=self._timeout, meta=_new_meta, copy=rows)
        copy.close()
        return copy.where
