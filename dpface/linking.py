"""Face templates for linking unnamed faces to named subjects -- raw biometric data.

:class:`TemplateStore` keeps RAW identity embeddings (face templates) of named subjects so that
later unnamed faces can be matched to them. A template is not a DP release: whoever holds the
store can recognise the enrolled people. It therefore lives in its own SQLite file, apart from
the privacy ledger and from every output, and belongs on the trusted side only. Matching decides
which budget is charged and which pseudonym is reused, so an output then depends on raw matching
that no mechanism covers: linking is opt-in, and receipts list it as an uncovered channel.

The file carries its own SQLite ``application_id``; an existing file that is not a template
store (a ledger, an unrelated database, an empty or text file) is refused and left untouched,
exactly as :class:`dpface.ledger.Ledger` does.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import LedgerError, UsageError
from .ledger import normalize_subject
from .ledger_backends import TEMPLATE_STORE_APPLICATION_ID, _open_file

__all__ = ["APPLICATION_ID", "MAX_REFERENCES", "SCHEMA_VERSION", "TemplateStore"]

APPLICATION_ID = TEMPLATE_STORE_APPLICATION_ID  # "dpts"
SCHEMA_VERSION = 1
MAX_REFERENCES = 5  # templates kept per subject and encoder

_SCHEMA = (
    """CREATE TABLE refs (
        subject TEXT NOT NULL,
        encoder TEXT NOT NULL,
        vector BLOB NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX refs_by_encoder ON refs(encoder, subject)",
)


def _init(con: sqlite3.Connection) -> None:
    for stmt in _SCHEMA:
        con.execute(stmt)


def _unit_vector(embedding: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    vec = np.asarray(embedding, dtype="<f8").ravel()
    norm = float(np.linalg.norm(vec)) if vec.size else 0.0
    if not (vec.size and np.all(np.isfinite(vec)) and norm > 0):
        raise ValueError(f"{what} must be a finite, non-zero vector")
    return vec / norm


class TemplateStore:
    """Raw biometric templates (face embeddings) of named subjects, for linking faces to them.

    Whoever holds this file can recognise the enrolled people: it belongs on the trusted side,
    apart from the ledger and from the outputs (never copy it into an output folder).

    ``path`` is a file (created with its folder when missing, unless ``create=False``) or
    ``":memory:"``. At most ``MAX_REFERENCES`` templates are kept per subject and encoder.
    """

    def __init__(self, path: str | Path, *, create: bool = True, timeout: float = 60.0) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self.path, self._conn = _open_file(
            path,
            application_id=APPLICATION_ID,
            version=SCHEMA_VERSION,
            what="a dpface template store",
            create=create,
            timeout=timeout,
            init=_init,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"the template store {self.path} is closed")

    def enroll(self, subject: str, encoder: str, embedding: npt.ArrayLike) -> None:
        """Keep a RAW template of ``subject`` (under ``encoder``) to link later faces to them.

        Later templates past ``MAX_REFERENCES`` per subject and encoder are ignored.
        """
        subject = normalize_subject(subject)
        if not isinstance(encoder, str) or not encoder:
            raise UsageError("encoder must be a non-empty string")
        vec = _unit_vector(embedding, "an enrolment embedding")
        with self._lock:
            self._check_open()
            con = self._conn
            con.execute("BEGIN IMMEDIATE")
            try:
                (kept,) = con.execute(
                    "SELECT COUNT(*) FROM refs WHERE subject=? AND encoder=?", (subject, encoder)
                ).fetchone()
                if kept < MAX_REFERENCES:
                    con.execute(
                        "INSERT INTO refs(subject, encoder, vector, created_at) "
                        "VALUES (?, ?, ?, ?)",
                        (subject, encoder, vec.tobytes(), time.time()),
                    )
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def match(
        self, encoder: str, embedding: npt.ArrayLike, threshold: float
    ) -> tuple[str, float] | None:
        """The enrolled subject most similar (cosine) to ``embedding``, if at or above
        ``threshold``: (subject, similarity); None when nobody matches."""
        vec = _unit_vector(embedding, "a query embedding")
        best: tuple[str, float] | None = None
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT subject, vector FROM refs WHERE encoder=? ORDER BY rowid", (encoder,)
            ).fetchall()
        for subject, blob in rows:
            ref = np.frombuffer(blob, dtype="<f8")
            if ref.shape != vec.shape:
                continue
            sim = float(ref @ vec)
            if sim >= threshold and (best is None or sim > best[1]):
                best = (str(subject), sim)
        return best

    def subjects(self) -> list[str]:
        """The enrolled subjects, sorted."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute("SELECT DISTINCT subject FROM refs ORDER BY subject")
            return [str(r[0]) for r in rows]

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if str(self.path) != ":memory:":
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("PRAGMA busy_timeout=5000")
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()

    def __enter__(self) -> TemplateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
