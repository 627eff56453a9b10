"""Face templates for linking: their own file, apart from the ledger."""

from __future__ import annotations

import hashlib
import sqlite3
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import dpface.linking
from dpface.errors import NotALedgerError, UsageError
from dpface.ledger import Ledger
from dpface.linking import APPLICATION_ID, MAX_REFERENCES, TemplateStore


def _unit(rng: np.random.Generator, dim: int = 16) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def test_enrol_and_match(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    alice, bob = _unit(rng), _unit(rng)
    path = tmp_path / "templates.db"
    with TemplateStore(path) as store:
        store.enroll("alice", "arcface", alice * 3.0)  # stored normalised
        store.enroll("bob", "arcface", bob)
        hit = store.match("arcface", alice + 0.05 * _unit(rng), threshold=0.8)
        assert hit is not None and hit[0] == "alice" and hit[1] > 0.9
        assert store.match("arcface", -alice, threshold=0.5) is None
        assert store.match("dlib", alice, threshold=0.5) is None  # another encoder's space
        assert store.match("arcface", np.ones(3), threshold=0.0) is None  # another dimension
    with TemplateStore(path, create=False) as store:  # persisted
        hit = store.match("arcface", bob, threshold=0.99)
        assert hit is not None and hit[0] == "bob" and hit[1] == pytest.approx(1.0)
        assert store.subjects() == ["alice", "bob"]


def test_subject_names_are_normalised(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    v = _unit(rng)
    nfd = unicodedata.normalize("NFD", "José")
    with TemplateStore(tmp_path / "t.db") as store:
        store.enroll(f"  {nfd} ", "arcface", v)
        hit = store.match("arcface", v, threshold=0.9)
        assert hit is not None and hit[0] == unicodedata.normalize("NFC", "José")
        with pytest.raises(UsageError):
            store.enroll("", "arcface", v)
        with pytest.raises(UsageError):
            store.enroll("a\x00b", "arcface", v)


def test_at_most_max_references_per_subject_and_encoder(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with TemplateStore(tmp_path / "t.db") as store:
        for _ in range(MAX_REFERENCES + 3):
            store.enroll("carol", "arcface", _unit(rng))
        store.enroll("carol", "dlib", _unit(rng))
    con = sqlite3.connect(tmp_path / "t.db")
    counts = dict(con.execute("SELECT encoder, COUNT(*) FROM refs GROUP BY encoder"))
    con.close()
    assert counts == {"arcface": MAX_REFERENCES, "dlib": 1}


def test_bad_embeddings_are_refused(tmp_path: Path) -> None:
    with TemplateStore(":memory:") as store:
        for bad in (np.zeros(4), np.array([1.0, np.nan]), np.array([])):
            with pytest.raises(ValueError):
                store.enroll("a", "arcface", bad)
            with pytest.raises(ValueError):
                store.match("arcface", bad, threshold=0.5)
        with pytest.raises(UsageError):
            store.enroll("a", "", np.ones(2))


def test_templates_are_not_in_the_ledger(tmp_path: Path) -> None:
    assert not hasattr(Ledger, "enroll") and not hasattr(Ledger, "match")
    with Ledger(tmp_path / "ledger.db") as led:
        tables = {r[0] for r in led._conn.execute("SELECT name FROM sqlite_master")}
    assert "refs" not in tables
    doc = " ".join((TemplateStore.__doc__ or "").split())
    assert "Raw biometric templates" in doc and "trusted side" in doc
    assert "apart from the ledger" in doc and "raw biometric" in (dpface.linking.__doc__ or "")


def test_a_ledger_is_not_a_template_store_and_back(tmp_path: Path) -> None:
    ledger_path, store_path = tmp_path / "ledger.db", tmp_path / "templates.db"
    Ledger(ledger_path).close()
    TemplateStore(store_path).close()
    for path, opener, message in (
        (ledger_path, TemplateStore, "is a dpface ledger, not a dpface template store"),
        (store_path, Ledger, "is a dpface template store .*, not a dpface ledger"),
    ):
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(NotALedgerError, match=message):
            opener(path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    con = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    con.close()


@pytest.mark.parametrize("kind", ["sqlite", "text", "empty"])
def test_other_files_are_refused_and_left_byte_identical(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.db"
    if kind == "sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
    elif kind == "text":
        path.write_text("hello\n")
    else:
        path.touch()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(NotALedgerError):
        TemplateStore(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_create_false_on_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TemplateStore(tmp_path / "nope" / "t.db", create=False)
    assert not (tmp_path / "nope").exists()
