"""The privacy ledger: budgets that bind, units, pseudonyms, races, crashes, the chain.

One suite for both backends: every test that takes ``ledger_at`` runs against an SQLite file and
against a real PostgreSQL server (tests/ledger_backends.py). Tests of what only one backend has
(SQLite files and their WAL; PostgreSQL schemas) say so in their names."""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing as mp
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import pytest
from dp_accounting import dp_event

from dpface.errors import DpfaceError, LedgerError, NotALedgerError, UsageError
from dpface.ledger import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    BudgetChangeRefused,
    BudgetExceeded,
    Ledger,
    Release,
    Verification,
    default_ledger_path,
    event_from_json,
    event_to_json,
    normalize_subject,
)
from mechanisms.budgets import ZCDP, ApproxDP, PureDP
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace

pytest_plugins = ("tests.ledger_backends",)  # ledger_at, backend, postgres_server


def new_schema(server: str) -> str:
    from tests.ledger_backends import new_schema

    return new_schema(server)


def run_sql(url: str, *statements: str) -> None:
    from tests.ledger_backends import run_sql

    run_sql(url, *statements)


ALL_KINDS = ("release", "refusal", "budget")


def _lap(eps: float = 1.0) -> Laplace:
    return Laplace(epsilon=eps, sensitivity=1.0)


def _charge_laplace(ledger: Ledger, subject: str, eps: float = 1.0) -> None:
    mech = _lap(eps)
    ledger.charge(subject, mechanism="laplace", budget=mech.guarantee.budget, event=mech.event())


def _release(
    ledger: Ledger,
    subject: str,
    key: str | None,
    *,
    seeded: bool = False,
    is_dp: bool = True,
    value: float | None = None,
    eps: float = 1.0,
) -> Release:
    mech = _lap(eps)

    def draw() -> np.ndarray:
        if value is not None:
            return np.full(4, value)
        return np.frombuffer(os.urandom(32), dtype="<u8").astype(np.float64)

    return ledger.release(
        subject,
        key=key,
        mechanism="laplace",
        budget=mech.guarantee.budget,
        event=mech.event(),
        seeded=seeded,
        is_dp=is_dp,
        draw=draw,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


# ====================================================================== budgets
def test_charges_until_the_budget_is_spent_then_refuses_and_records_the_refusal(
    ledger_at: Any,
) -> None:
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("alice", PureDP(3.0))
        for _ in range(3):
            _charge_laplace(led, "alice")
        with pytest.raises(BudgetExceeded, match="left") as info:
            _charge_laplace(led, "alice")
        assert "no noise was drawn" in str(info.value)
        assert info.value.budget == ApproxDP(3.0, 0.0) and info.value.would_be == 4.0
        assert len(led.events("alice")) == 3  # releases only by default
        refusals = led.events("alice", kinds=("refusal",))
        assert len(refusals) == 1 and refusals[0]["epsilon"] == 1.0
        assert refusals[0]["kind"] == "refusal" and refusals[0]["mechanism"] == "laplace"
        assert led.spent("alice").epsilon == pytest.approx(3.0)  # refusals cost nothing
        assert led.remaining("alice") == pytest.approx(0.0)
    with Ledger(ledger_at("l.db")) as led:  # the refusal was committed
        assert len(led.events(kinds=("refusal",))) == 1


def test_budget_exceeded_is_a_ledger_error() -> None:
    assert issubclass(BudgetExceeded, LedgerError) and issubclass(BudgetExceeded, DpfaceError)
    assert issubclass(BudgetChangeRefused, LedgerError)


def test_partial_budget_is_respected(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("bob", PureDP(1.5))
        _charge_laplace(led, "bob")
        with pytest.raises(BudgetExceeded):
            _charge_laplace(led, "bob")
        _charge_laplace(led, "bob", eps=0.5)
        assert led.remaining("bob") == pytest.approx(0.0, abs=1e-12)


def test_unknown_subject_needs_a_budget(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db")) as led, pytest.raises(KeyError, match="set_budget"):
        _charge_laplace(led, "carol")
    with Ledger(ledger_at("l.db"), default_budget=PureDP(2.0)) as led:
        assert led.remaining("carol") == 2.0
        _charge_laplace(led, "carol")
        assert led.budget("carol") == ApproxDP(2.0, 0.0)
        created = led.events("carol", kinds=("budget",))
        assert [e["mechanism"] for e in created] == ["budget:default"]
    with Ledger(ledger_at("l.db")) as led:
        assert led.remaining("nobody") == math.inf


def test_set_budget_never_changes_a_budget_silently(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("dan", PureDP(5.0))
        led.set_budget("dan", PureDP(5.0))  # the same budget again: a no-op
        led.set_budget("dan", ApproxDP(5.0, 0.0))  # the same budget written otherwise
        with pytest.raises(BudgetChangeRefused, match="change_budget"):
            led.set_budget("dan", PureDP(10.0))
        with pytest.raises(BudgetChangeRefused, match="change_budget"):
            led.set_budget("dan", PureDP(1.0))
        assert led.budget("dan") == ApproxDP(5.0, 0.0)
        assert len(led.events("dan", kinds=("budget",))) == 1


def test_change_budget_is_explicit_recorded_and_never_below_spending(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("dan", PureDP(5.0))
        _charge_laplace(led, "dan", eps=2.0)
        with pytest.raises(BudgetChangeRefused, match="already spent") as info:
            led.change_budget("dan", PureDP(1.0), reason="oops")
        assert info.value.spent == ApproxDP(2.0, 0.0)
        assert led.budget("dan") == ApproxDP(5.0, 0.0)
        led.change_budget("dan", PureDP(2.0), reason="exactly what is spent is allowed")
        led.change_budget("dan", PureDP(10.0), reason="consent renewed")
        assert led.remaining("dan") == pytest.approx(8.0)
        changes = led.events("dan", kinds=("budget",))
        assert [(e["mechanism"], e["epsilon"], e["note"]) for e in changes] == [
            ("budget:create", 5.0, ""),
            ("budget:change", 2.0, "exactly what is spent is allowed"),
            ("budget:change", 10.0, "consent renewed"),
        ]
        led.change_budget("new", ApproxDP(3.0, 1e-6), reason="first")  # creates a subject
        assert led.budget("new") == ApproxDP(3.0, 1e-6)
        assert led.verify().ok


@pytest.mark.parametrize(
    "budget",
    [
        PureDP(math.inf, allow_inf=True),
        ApproxDP(math.inf, 1e-6, allow_inf=True),
        ZCDP(math.inf, allow_inf=True),
    ],
    ids=["pure", "approx", "zcdp"],
)
def test_infinite_budgets_are_refused_everywhere_and_the_ledger_stays_usable(
    ledger_at: Any,
    budget: Any,
) -> None:
    with pytest.raises(ValueError, match="finite"):
        Ledger(ledger_at("l.db"), default_budget=budget)
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("s", PureDP(2.0))
        with pytest.raises(ValueError, match="finite"):
            led.set_budget("t", budget)
        with pytest.raises(ValueError, match="finite"):
            led.change_budget("s", budget)
        with pytest.raises(ValueError, match="finite"):
            led.charge("s", mechanism="m", budget=budget, event=_lap().event())
        with pytest.raises(ValueError, match="finite"):
            _ = led.release(
                "s",
                key="k",
                mechanism="m",
                budget=budget,
                event=_lap().event(),
                draw=lambda: np.zeros(2),
            )
        # nothing of that was recorded, and everything still works
        _charge_laplace(led, "s")
        assert led.subjects() == ["s"]
        assert led.budget("s") == ApproxDP(2.0, 0.0)
        assert led.spent("s").epsilon == 1.0 and led.remaining("s") == 1.0
        assert len(led.events(kinds=ALL_KINDS)) == 2
        assert led.verify().ok


def test_ledger_persists_across_opens(ledger_at: Any) -> None:
    path = ledger_at("l.db")
    with Ledger(path) as led:
        led.set_budget("eve", PureDP(4.0))
        _charge_laplace(led, "eve")
    with Ledger(path) as led:
        assert led.spent("eve").epsilon == pytest.approx(1.0)
        assert event_from_json(led.events("eve")[0]["dp_event"]) == _lap().event()


def test_pld_composition_charges_repeated_gaussians_less_than_basic(ledger_at: Any) -> None:
    """Averaging n releases of one person is an attack; the ledger charges every release, and
    the tight (PLD) total grows like sqrt(n) rather than n."""
    mech = Gaussian(epsilon=1.0, delta=1e-6, sensitivity=2.0)
    totals = {}
    for comp in ("basic", "pld"):
        with Ledger(ledger_at(f"{comp}.db"), composition=comp) as led:  # type: ignore[arg-type]
            led.set_budget("frank", ApproxDP(100.0, 1e-4))
            for _ in range(10):
                led.charge(
                    "frank", mechanism="gaussian", budget=mech.guarantee.budget, event=mech.event()
                )
            assert len(led.events("frank")) == 10
            totals[comp] = led.spent("frank").epsilon
    assert totals["basic"] == pytest.approx(10.0)
    assert totals["pld"] < 0.6 * totals["basic"]
    assert totals["pld"] > 1.0


def test_a_refusal_for_delta_says_delta_ran_out(ledger_at: Any) -> None:
    from mechanisms.accounting import pure_event

    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("s", ApproxDP(20.0, 2e-6))
        for _ in range(2):
            led.charge("s", mechanism="m", budget=ApproxDP(1.0, 1e-6), event=pure_event(1.0))
        with pytest.raises(BudgetExceeded, match="delta to 3e-06") as err:
            led.charge("s", mechanism="m", budget=ApproxDP(1.0, 1e-6), event=pure_event(1.0))
        assert "epsilon would still fit" in str(err.value) and len(led.events("s")) == 2


def test_the_old_charge_call_of_steering_still_works_and_flags_are_stored(ledger_at: Any) -> None:
    from mechanisms.accounting import pure_event

    with Ledger(ledger_at("l.db"), default_budget=PureDP(5.0)) as led:
        c = led.charge(
            "reference:celeb",
            mechanism="KAnonymousVoting",
            budget=PureDP(0.1),
            event=pure_event(0.1),
            note="k=100",
        )
        led.charge(
            "x", mechanism="m", budget=PureDP(0.1), event=pure_event(0.1), seeded=True, is_dp=False
        )
        ev = led.events()
        assert (c.id, c.subject, c.budget, c.run_id) == (
            2,
            "reference:celeb",
            ApproxDP(0.1, 0.0),
            led.run_id,
        )
        assert [(e["note"], e["seeded"], e["is_dp"]) for e in ev] == [
            ("k=100", False, True),
            ("", True, False),
        ]
        assert set(ev[0]) == {
            "id",
            "kind",
            "subject",
            "mechanism",
            "epsilon",
            "delta",
            "dp_event",
            "run_id",
            "note",
            "seeded",
            "is_dp",
            "created_at",
            "hash",
        }


def test_event_json_round_trip() -> None:
    ev = dp_event.ComposedDpEvent(
        [
            dp_event.PoissonSampledDpEvent(0.05, dp_event.LaplaceDpEvent(2.0)),
            dp_event.GaussianDpEvent(3.0),
        ]
    )
    assert event_from_json(event_to_json(ev)) == ev


def test_a_closed_ledger_says_so(ledger_at: Any) -> None:
    led = Ledger(ledger_at("l.db"), default_budget=PureDP(1.0))
    led.close()
    led.close()  # twice is fine
    with pytest.raises(LedgerError, match="closed"):
        _charge_laplace(led, "a")


# ====================================================================== subject names
def test_subject_names_are_normalised_everywhere(ledger_at: Any) -> None:
    nfc = unicodedata.normalize("NFC", "José")
    nfd = unicodedata.normalize("NFD", "José")
    assert nfc != nfd
    assert normalize_subject(nfd) == nfc == normalize_subject(f"  {nfc}\t")
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget(nfc, PureDP(3.0))
        led.set_budget(f" {nfd} ", PureDP(3.0))  # the same subject, the same budget: a no-op
        _charge_laplace(led, nfd)
        _charge_laplace(led, f"{nfc}\n")
        assert led.subjects() == [nfc]
        assert led.spent(nfd).epsilon == 2.0 and led.remaining(f" {nfd}") == 1.0
        assert len(led.events(nfd)) == 2 and led.budget(nfd) == ApproxDP(3.0, 0.0)
        led.set_budget("alice", PureDP(2.0))
        r = _release(led, " alice", "k")
        assert led.pseudonym("alice ", "k") is not None
        assert _release(led, "alice", "k").reused
        assert r.charge is not None and r.charge.subject == "alice"
        assert "Alice" != normalize_subject("alice")  # case is kept: ids are case-sensitive


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "\t\n",
        "al\x00ice",
        "al\nice",
        "bob\x1b[31m",
        "a\u202eb",
        "a\u200bb",
        "x" * 201,
        None,
        b"alice",
        17,
    ],
)
def test_bad_subject_names_are_usage_errors(ledger_at: Any, bad: Any) -> None:
    with pytest.raises(UsageError):
        normalize_subject(bad)
    with Ledger(ledger_at("l.db"), default_budget=PureDP(5.0)) as led:
        with pytest.raises(UsageError):
            _charge_laplace(led, bad)
        with pytest.raises(UsageError):
            led.set_budget(bad, PureDP(1.0))
        with pytest.raises(UsageError):
            led.spent(bad)
        with pytest.raises(UsageError):
            _release(led, bad, "k")
        assert led.events(kinds=ALL_KINDS) == [] and led.subjects() == []


def test_long_names_up_to_the_limit_are_fine() -> None:
    assert normalize_subject("x" * 200) == "x" * 200
    assert normalize_subject("名前\u200dx") == "名前\u200dx"  # a joiner is not a control


# ====================================================================== opening files
def _make_plain_sqlite(path: Path, *, wal: bool) -> None:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE photos (name TEXT, taken REAL)")
    con.execute("INSERT INTO photos VALUES ('a.jpg', 1.0)")
    con.commit()
    con.close()


def _make_v1_ledger(path: Path) -> None:
    """A file as dpface's schema-1 ledger wrote it (no application_id, a meta 'schema' row)."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE subjects (subject TEXT PRIMARY KEY, budget_epsilon REAL NOT NULL,
                               budget_delta REAL NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL,
                             mechanism TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
                             dp_event TEXT NOT NULL, run_id TEXT NOT NULL,
                             note TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        INSERT INTO subjects VALUES ('alice', 5.0, 0.0, 0.0);
        """
    )
    con.commit()
    con.close()


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-wal", "text", "v1-ledger"])
def test_a_file_that_is_not_a_ledger_is_refused_and_left_byte_identical(
    tmp_path: Path,
    kind: str,
) -> None:
    path = tmp_path / "photos.db"
    if kind == "text":
        path.write_text("name,taken\na.jpg,1\n" * 20)
    elif kind == "v1-ledger":
        _make_v1_ledger(path)
    else:
        _make_plain_sqlite(path, wal=kind == "sqlite-wal")
    before, siblings = _sha256(path), _siblings(path)
    expected = {
        "sqlite": "not a dpface ledger",
        "sqlite-wal": "not a dpface ledger",
        "text": "not an SQLite database",
        "v1-ledger": "schema 1",
    }[kind]
    with pytest.raises(NotALedgerError, match=expected) as info:
        Ledger(path, default_budget=PureDP(1.0))
    assert "untouched" in str(info.value)
    assert _sha256(path) == before
    assert _siblings(path) == siblings  # no -wal / -shm / -journal appeared
    if kind.startswith("sqlite"):  # header bytes 18-19: 1 = rollback journal, 2 = WAL
        assert path.read_bytes()[18] == (2 if kind == "sqlite-wal" else 1)


def test_an_empty_file_is_refused_not_taken_as_a_new_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.touch()
    with pytest.raises(NotALedgerError, match="is empty; a dpface ledger was expected"):
        Ledger(path)
    assert path.stat().st_size == 0 and _siblings(path) == []


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotALedgerError, match="not a regular file"):
        Ledger(tmp_path)


def test_a_ledger_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger(path).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version=3")
    con.commit()
    con.close()
    with pytest.raises(NotALedgerError, match="schema 3"):
        Ledger(path)


def test_create_false_on_a_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ledger.db"
    with pytest.raises(FileNotFoundError):
        Ledger(path, create=False)
    assert not path.parent.exists()


def test_a_new_ledger_is_created_with_its_folder_id_version_and_secret(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "ledger.db"
    with Ledger(path) as one:
        digest_one = one.unit_digest(b"pixels")
    assert path.is_file() and _siblings(path) == []  # no temporary file left behind
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    secret = con.execute("SELECT value FROM meta WHERE key='secret'").fetchone()[0]
    con.close()
    assert len(bytes.fromhex(secret)) == 32
    if os.name == "posix":
        assert path.stat().st_mode & 0o077 == 0  # the ledger is the trusted side's
    with Ledger(path, create=False) as again:
        assert again.unit_digest(b"pixels") == digest_one  # the secret is kept
    with Ledger(tmp_path / "other.db") as other:
        assert other.unit_digest(b"pixels") != digest_one  # and is per ledger
    with Ledger(":memory:") as mem:
        assert len(mem.unit_digest(b"pixels")) == 64


def test_default_ledger_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DPFACE_LEDGER", str(tmp_path / "mine.db"))
    assert default_ledger_path() == tmp_path / "mine.db"
    monkeypatch.delenv("DPFACE_LEDGER")
    assert default_ledger_path() == platformdirs.user_data_path("dpface") / "ledger.db"


# ====================================================================== units of unnamed faces
def test_face_units_of_unnamed_faces(ledger_at: Any) -> None:
    path = ledger_at("l.db")
    with Ledger(path) as led:
        photo = led.unit_digest(b"decoded pixels of photo 1")
        other = led.unit_digest(b"decoded pixels of photo 2")
        a = led.face_unit(photo, (100, 100, 200, 200))
        assert a.startswith("face:") and len(a) == len("face:") + 20
        assert led.face_unit(photo, (100, 100, 200, 200)) == a  # same photo, same box
        assert led.face_unit(photo, (110, 95, 205, 210)) == a  # another detector's box
        b = led.face_unit(photo, (400, 100, 500, 200))  # another face of the photo
        assert b not in (a,)
        assert led.face_unit(other, (100, 100, 200, 200)) not in (a, b)  # another photo
        assert led.face_unit(photo, (130, 100, 230, 200)) == a  # IoU 0.54
        assert led.face_unit(photo, (370, 100, 470, 200)) == b
        # a box overlapping too little (IoU < 0.3) is a new face
        c = led.face_unit(photo, (170, 170, 270, 270))
        assert c not in (a, b)
    with Ledger(path) as led:  # and across runs
        assert led.face_unit(photo, (101, 99, 199, 201)) == a
        assert led.face_unit(photo, (400, 100, 500, 200)) == b
        # two close faces (IoU 0.25: separate units); a box overlapping both goes to the better
        crowd = led.unit_digest(b"decoded pixels of a crowd")
        left = led.face_unit(crowd, (0, 0, 100, 100))
        right = led.face_unit(crowd, (60, 0, 160, 100))
        assert left != right
        assert led.face_unit(crowd, (20, 0, 120, 100)) == left  # IoU 0.67 vs 0.43
        assert led.face_unit(crowd, (45, 0, 145, 100)) == right  # IoU 0.38 vs 0.74


def test_rerunning_on_the_same_photo_charges_the_same_unit(ledger_at: Any) -> None:
    path = ledger_at("l.db")
    refused = 0
    for _ in range(4):
        with Ledger(path, default_budget=PureDP(2.0)) as led:
            unit = led.face_unit(led.unit_digest(b"same photo"), (10, 10, 50, 50))
            try:
                _charge_laplace(led, unit)
            except BudgetExceeded:
                refused += 1
    assert refused == 2
    with Ledger(path) as led:
        assert led.subjects() == [unit] and led.spent(unit).epsilon == 2.0


def test_face_unit_checks_its_arguments(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db")) as led:
        with pytest.raises(UsageError):
            led.face_unit("", (0, 0, 1, 1))
        with pytest.raises(UsageError):
            led.face_unit("p", (0, 0, 0, 10))
        with pytest.raises(UsageError):
            led.face_unit("p", (0, 0, 10))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            led.unit_digest("text")  # type: ignore[arg-type]


# ====================================================================== pseudonyms
def test_release_stores_and_reuses_a_pseudonym_under_the_exact_key(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("p", PureDP(10.0))
        first = _release(led, "p", "IdentityLaplace|eps=1|enc", value=1.0)
        assert not first.reused and first.charge is not None
        np.testing.assert_array_equal(first.vector, np.full(4, 1.0))
        again = _release(led, "p", "IdentityLaplace|eps=1|enc", value=2.0)
        assert again.reused and again.charge is None
        np.testing.assert_array_equal(again.vector, np.full(4, 1.0))
        other_key = _release(led, "p", "IdentityLaplace|eps=2|enc", value=3.0)
        assert not other_key.reused
        np.testing.assert_array_equal(other_key.vector, np.full(4, 3.0))
        fresh = _release(led, "p", None, value=4.0)  # no key: a fresh draw, charged
        assert not fresh.reused and fresh.charge is not None
        assert len(led.events("p")) == 3 and led.spent("p").epsilon == 3.0
        stored = led.pseudonym("p", "IdentityLaplace|eps=1|enc")
        assert stored is not None
        np.testing.assert_array_equal(stored, np.full(4, 1.0))
        assert led.pseudonym("p", "unknown") is None


def test_seeded_or_non_dp_releases_are_never_stored_nor_reused(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("p", PureDP(10.0))
        for flags in ({"seeded": True}, {"is_dp": False}):
            r = _release(led, "p", "key", value=1.0, **flags)  # type: ignore[arg-type]
            assert not r.reused and r.charge is not None
            assert led.pseudonym("p", "key") is None
        dp = _release(led, "p", "key", value=2.0)  # the first DP release is stored
        assert not dp.reused and led.pseudonym("p", "key") is not None
        for flags in ({"seeded": True}, {"is_dp": False}):
            r = _release(led, "p", "key", value=3.0, **flags)  # type: ignore[arg-type]
            assert not r.reused and r.charge is not None  # never handed the DP pseudonym
            np.testing.assert_array_equal(r.vector, np.full(4, 3.0))
        stored = led.pseudonym("p", "key")
        assert stored is not None
        np.testing.assert_array_equal(stored, np.full(4, 2.0))
        assert [(e["seeded"], e["is_dp"]) for e in led.events("p")] == [
            (True, True),
            (False, False),
            (False, True),
            (True, True),
            (False, False),
        ]


def test_a_failing_draw_publishes_and_charges_nothing(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db"), default_budget=PureDP(5.0)) as led:

        def boom() -> np.ndarray:
            raise RuntimeError("generator crashed")

        with pytest.raises(RuntimeError, match="generator crashed"):
            led.release(
                "p", key="k", mechanism="m", budget=PureDP(1.0), event=_lap().event(), draw=boom
            )
        assert led.events(kinds=ALL_KINDS) == [] and led.subjects() == []
        assert led.pseudonym("p", "k") is None
        assert led.verify().ok
        assert not _release(led, "p", "k").reused


def test_a_refused_release_draws_nothing_and_is_recorded(ledger_at: Any) -> None:
    drawn = []
    with Ledger(ledger_at("l.db")) as led:
        led.set_budget("p", PureDP(0.5))
        with pytest.raises(BudgetExceeded):
            led.release(
                "p",
                key="k",
                mechanism="m",
                budget=PureDP(1.0),
                event=_lap().event(),
                draw=lambda: drawn.append(1) or np.zeros(2),
            )  # type: ignore[func-returns-value]
        assert drawn == [] and led.pseudonym("p", "k") is None
        assert [e["kind"] for e in led.events(kinds=ALL_KINDS)] == ["budget", "refusal"]


def test_pseudonyms_keep_dtype_and_shape(ledger_at: Any) -> None:
    with Ledger(ledger_at("l.db"), default_budget=PureDP(5.0)) as led:
        value = np.arange(6, dtype=np.float32).reshape(2, 3)
        led.release(
            "p",
            key="k",
            mechanism="m",
            budget=PureDP(1.0),
            event=_lap().event(),
            draw=lambda: value,
        )
        back = led.pseudonym("p", "k")
        assert back is not None and back.dtype == np.float32 and back.shape == (2, 3)
        np.testing.assert_array_equal(back, value)


# ====================================================================== runs
def test_subjects_and_events_of_one_run(ledger_at: Any) -> None:
    path = ledger_at("l.db")
    with Ledger(path, default_budget=PureDP(1.0)) as first:
        _charge_laplace(first, "a")
        _charge_laplace(first, "b")
        run1 = first.run_id
    with Ledger(path, default_budget=PureDP(1.0)) as second:
        with pytest.raises(BudgetExceeded):
            _charge_laplace(second, "a")  # a refusal is an entry of this run
        _charge_laplace(second, "c")
        second.set_budget("d", PureDP(1.0))  # a budget alone is not a release or refusal
        run2 = second.run_id
        assert run1 != run2
        assert second.subjects() == ["a", "b", "c", "d"]
        assert second.subjects(run_id=run1) == ["a", "b"]
        assert second.subjects(run_id=run2) == ["a", "c"]
        assert second.subjects(run_id="nope") == []
        assert [e["subject"] for e in second.events(run_id=run2)] == ["c"]
        assert [e["subject"] for e in second.events(run_id=run2, kinds=("refusal",))] == ["a"]
        assert [e["kind"] for e in second.events("a", kinds=ALL_KINDS)] == [
            "budget",
            "release",
            "refusal",
        ]
        with pytest.raises(UsageError):
            second.events(kinds=("bogus",))


def test_runs_are_recorded(ledger_at: Any) -> None:
    path = ledger_at("l.db")
    with Ledger(path) as led:
        led.record_run({"version": "0.1.0", "mechanism": "identity-laplace", "epsilon": 6.0})
        led.finish_run({"photos": 3, "faces": 5, "refused": 1})
        run_id = led.run_id
    with Ledger(path) as led:
        led.record_run({"version": "0.1.0", "out": Path("x")})
        runs = led.runs()
    assert [r["run_id"] for r in runs] == [run_id, led.run_id]
    assert runs[0]["settings"]["mechanism"] == "identity-laplace"
    assert runs[0]["summary"] == {"photos": 3, "faces": 5, "refused": 1}
    assert runs[0]["started_at"] <= runs[0]["finished_at"]
    assert runs[1]["finished_at"] is None and runs[1]["summary"] is None
    assert runs[1]["settings"]["out"] == "x"


# ====================================================================== concurrency
def _racer(path: str, tries: int, out: Any) -> None:
    led = Ledger(path)
    ok = 0
    for _ in range(tries):
        try:
            _charge_laplace(led, "shared")
            ok += 1
        except BudgetExceeded:
            pass
    led.close()
    out.put(ok)


def test_four_processes_racing_never_overspend(ledger_at: Any) -> None:
    path = ledger_at("race.db")
    with Ledger(path) as led:
        led.set_budget("shared", PureDP(10.0))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(path), 8, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    granted = sum(out.get(timeout=5) for _ in procs)
    with Ledger(path) as led:
        assert granted == 10 == len(led.events("shared"))
        assert len(led.events("shared", kinds=("refusal",))) == 32 - 10
        assert led.spent("shared").epsilon == pytest.approx(10.0)
        check = led.verify()
        assert check.ok, check.problems
        assert check.entries == 1 + 32


def _first_release(path: str, barrier: Any, out: Any) -> None:
    with Ledger(path, default_budget=PureDP(100.0)) as led:
        barrier.wait(timeout=60)

        def draw() -> np.ndarray:
            time.sleep(0.05)  # widen the window between "no pseudonym yet" and "stored"
            return np.frombuffer(os.urandom(64), dtype="<u8").astype(np.float64)

        r = led.release(
            "person", key="k", mechanism="m", budget=PureDP(1.0), event=_lap().event(), draw=draw
        )
        out.put((r.vector.tobytes(), r.reused))


def test_processes_racing_on_a_first_release_publish_one_identity(ledger_at: Any) -> None:
    path = ledger_at("race.db")
    Ledger(path).close()
    ctx = mp.get_context("spawn")
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_first_release, args=(str(path), barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = [out.get(timeout=5) for _ in procs]
    assert len({v for v, _ in results}) == 1  # everyone published the same identity
    assert sorted(r for _, r in results) == [False] + [True] * (n - 1)
    with Ledger(path) as led:
        assert len(led.events("person")) == 1  # charged once
        assert led.verify().ok


@pytest.mark.parametrize("shared", [True, False], ids=["one-ledger", "ledger-per-thread"])
def test_threads_racing_never_overspend_nor_publish_two_pseudonyms(
    ledger_at: Any,
    shared: bool,
) -> None:
    path = ledger_at("threads.db")
    with Ledger(path) as led:
        led.set_budget("shared", PureDP(10.0))
        led.set_budget("person", PureDP(10.0))
    common = Ledger(path) if shared else None
    barrier = threading.Barrier(8)

    def work(_: int) -> tuple[int, list[bytes]]:
        led = common if common is not None else Ledger(path)
        try:
            barrier.wait(timeout=60)
            ok, vectors = 0, []
            for _ in range(5):
                try:
                    _charge_laplace(led, "shared")
                    ok += 1
                except BudgetExceeded:
                    pass
                vectors.append(_release(led, "person", "k").vector.tobytes())
            return ok, vectors
        finally:
            if common is None:
                led.close()

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
    finally:
        if common is not None:
            common.close()
    assert sum(ok for ok, _ in results) == 10
    assert len({v for _, vs in results for v in vs}) == 1
    with Ledger(path) as led:
        assert len(led.events("shared")) == 10
        assert len(led.events("shared", kinds=("refusal",))) == 30
        assert len(led.events("person")) == 1
        assert led.verify().ok


def _create_same(path: str, barrier: Any, out: Any) -> None:
    barrier.wait(timeout=60)
    with Ledger(path) as led:
        out.put(led.unit_digest(b"photo"))


def test_processes_creating_one_new_ledger_at_once_share_it(tmp_path: Path) -> None:
    path = tmp_path / "new" / "ledger.db"
    ctx = mp.get_context("spawn")
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_create_same, args=(str(path), barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    digests = {out.get(timeout=5) for _ in procs}
    assert len(digests) == 1  # one ledger, one secret: nobody saw a half-made file
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.db"]


_CHILD = """
import sys, time
from dpface.ledger import Ledger
from mechanisms.laplace import Laplace
led = Ledger(sys.argv[1])
mech = Laplace(epsilon=0.01, sensitivity=1.0)
while True:
    c = led.charge("victim", mechanism="laplace", budget=mech.guarantee.budget, event=mech.event())
    print(c.id, flush=True)
    time.sleep(0.005)
"""


def test_a_killed_process_loses_no_committed_event(ledger_at: Any, backend: str) -> None:
    path = ledger_at("crash.db")
    with Ledger(path) as led:
        led.set_budget("victim", PureDP(1000.0))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    reported = []
    deadline = time.time() + 60
    while len(reported) < 20 and time.time() < deadline:
        line = child.stdout.readline()
        if line:
            reported.append(int(line))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert len(reported) == 20
    if backend == "sqlite":
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    with Ledger(path) as led:
        ids = {e["id"] for e in led.events("victim")}
        assert led.verify().ok
    assert set(reported) <= ids  # every event the child saw committed is still there


# ====================================================================== backup and close
def test_backup_copies_entries_still_in_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    led = Ledger(path, default_budget=PureDP(50.0))
    try:
        for i in range(12):
            _charge_laplace(led, f"s{i % 3}")
        _release(led, "s0", "k", value=7.0)
        assert (tmp_path / "l.db-wal").stat().st_size > 0  # entries not yet checkpointed
        head = led.verify().head
        # copying ledger.db alone now would lose them -- which is why backup() exists
        naive = tmp_path / "naive.db"
        naive.write_bytes(path.read_bytes())
        with Ledger(naive) as copy:
            assert len(copy.events(kinds=ALL_KINDS)) < 12
        dest = led.backup(tmp_path / "backups" / "copy.db")
        assert dest == tmp_path / "backups" / "copy.db"
        assert _siblings(dest) == []  # one self-contained file
        with pytest.raises(FileExistsError):
            led.backup(dest)
    finally:
        led.close()
    with Ledger(dest, create=False) as copy:
        assert len(copy.events()) == 13
        assert copy.spent("s1").epsilon == 4.0
        stored = copy.pseudonym("s0", "k")
        assert stored is not None and stored[0] == 7.0
        check = copy.verify()
        assert check.ok and check.head == head and check.entries == 16


def test_backup_keeps_the_unit_secret_and_memory_ledgers_can_be_backed_up(
    tmp_path: Path,
) -> None:
    with Ledger(":memory:", default_budget=PureDP(5.0)) as mem:
        _charge_laplace(mem, "a")
        digest = mem.unit_digest(b"photo")
        mem.backup(tmp_path / "from-memory.db")
    with Ledger(tmp_path / "from-memory.db") as copy:
        assert copy.unit_digest(b"photo") == digest
        assert copy.spent("a").epsilon == 1.0 and copy.verify().ok


def test_close_checkpoints_so_the_file_alone_holds_everything(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(path, default_budget=PureDP(50.0)) as led:
        for _ in range(5):
            _charge_laplace(led, "a")
    wal = tmp_path / "l.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    with Ledger(copy) as led:
        assert len(led.events("a")) == 5 and led.verify().ok


# ====================================================================== the hash chain
def _tampered(ledger_at: Any, *sql: str) -> Ledger:
    path = ledger_at("l.db")
    with Ledger(path) as led:
        led.set_budget("a", PureDP(10.0))
        led.set_budget("b", PureDP(10.0))
        for _ in range(3):
            _charge_laplace(led, "a")
            _charge_laplace(led, "b")
        assert led.verify().ok
    if isinstance(path, str):  # PostgreSQL
        run_sql(path, *sql)
    else:
        con = sqlite3.connect(path)
        for stmt in sql:
            con.execute(stmt)
        con.commit()
        con.close()
    return Ledger(path)


def test_an_untouched_chain_verifies(ledger_at: Any) -> None:
    with _tampered(ledger_at) as led:
        check = led.verify()
        assert check.ok and check.problems == [] and check.entries == 8
        assert check.head == led.events(kinds=ALL_KINDS)[-1]["hash"]
    with Ledger(":memory:") as empty:
        assert empty.verify() == Verification(True, 0, "", [])


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (["UPDATE entries SET epsilon=0.001 WHERE id=4"], "entry 4 .*does not match its hash"),
        (["UPDATE entries SET note='x', hash=hash WHERE id=3"], "entry 3 .*does not match"),
        (["DELETE FROM entries WHERE id=5"], "entry 6 is at position 5"),
        (["DELETE FROM entries WHERE id=8"], "the chain head says 8 entries"),
        (["DELETE FROM entries WHERE id IN (7, 8)"], "the chain head says 8 entries"),
        (
            ["UPDATE subjects SET budget_epsilon=1000 WHERE subject='a'"],
            "subject 'a': its budget row",
        ),
        (
            ["UPDATE meta SET value='7:' || substr(value, 3) WHERE key='head'"],
            "the chain head says 7 entries",
        ),
        (
            [
                "UPDATE entries SET id=100 WHERE id=4",
                "UPDATE entries SET id=4 WHERE id=5",
                "UPDATE entries SET id=5 WHERE id=100",
            ],
            "entry 4: its prev_hash does not link",
        ),
        (["UPDATE entries SET seeded=2 WHERE id=3"], "entry 3: seeded is 2"),
    ],
    ids=[
        "edit-epsilon",
        "edit-note",
        "delete-middle",
        "delete-last",
        "delete-last-two",
        "edit-budget-row",
        "edit-head",
        "reorder",
        "edit-flag",
    ],
)
def test_verify_catches_tampering(ledger_at: Any, sql: list[str], expected: str) -> None:
    with _tampered(ledger_at, *sql) as led:
        check = led.verify()
        assert not check.ok
        assert any(re.search(expected, p) for p in check.problems), check.problems


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM entries WHERE id=8",
        "UPDATE meta SET value='8:' || printf('%064d', 0) WHERE key='head'",
        "UPDATE subjects SET budget_epsilon=1000 WHERE subject='a'",
    ],
    ids=["delete-last", "edit-head", "edit-budget-row"],
)
def test_a_tampered_ledger_records_nothing_more(ledger_at: Any, backend: str, sql: str) -> None:
    if backend == "postgres":  # the same edits in PostgreSQL's dialect
        sql = sql.replace("printf('%064d', 0)", "repeat('0', 64)")
    with _tampered(ledger_at, sql) as led:
        before = len(led.events(kinds=ALL_KINDS))
        with pytest.raises(LedgerError, match="outside dpface"):
            _charge_laplace(led, "a")
        assert len(led.events(kinds=ALL_KINDS)) == before


# ====================================================================== PostgreSQL schemas
def _pg_tables(url: str) -> set[str]:
    import psycopg

    with psycopg.connect(url) as con:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=current_schema()"
        ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("kind", ["other-tables", "foreign-meta", "another-version"])
def test_postgres_a_schema_that_is_not_a_ledger_is_refused_and_left_untouched(
    postgres_server: str,
    kind: str,
) -> None:
    url = new_schema(postgres_server)
    setup = {
        "other-tables": ["CREATE TABLE patients (id INT)", "INSERT INTO patients VALUES (1)"],
        "foreign-meta": ["CREATE TABLE meta (a INT, b INT)"],
        "another-version": [],
    }[kind]
    if kind == "another-version":
        Ledger(url).close()
        setup = ["UPDATE meta SET value='1' WHERE key='user_version'"]
    run_sql(url, *setup)
    before = _pg_tables(url)
    expected = {
        "other-tables": "no dpface ledger",
        "foreign-meta": "not a dpface ledger",
        "another-version": "of schema 1",
    }[kind]
    with pytest.raises(NotALedgerError, match=expected):
        Ledger(url)
    assert _pg_tables(url) == before  # nothing added


def test_postgres_create_false_and_a_missing_schema(postgres_server: str) -> None:
    url = new_schema(postgres_server)
    with pytest.raises(FileNotFoundError, match="create=False"):
        Ledger(url, create=False)
    assert _pg_tables(url) == set()
    nowhere = f"{postgres_server}?options=-csearch_path%3Dno_such_schema"
    with pytest.raises(LedgerError, match="no existing schema"):
        Ledger(nowhere)


def test_postgres_a_new_ledger_and_its_location(postgres_server: str) -> None:
    url = new_schema(postgres_server)
    with Ledger.connect(url, default_budget=PureDP(2.0)) as led:
        assert led.backend == "postgresql"
        assert isinstance(led.path, str) and led.path.startswith("postgresql://")
        assert "csearch_path" in led.path  # the schema is part of the location
        digest = led.unit_digest(b"photo")
        _charge_laplace(led, "a")
        shown = led.path
    assert _pg_tables(url) == {"meta", "subjects", "entries", "pseudonyms", "face_units", "runs"}
    # the location shown reopens it, also after a round trip through Path (which drops a slash)
    for again in (shown, Path(shown)):
        with Ledger(again, create=False) as led:
            assert led.unit_digest(b"photo") == digest and led.spent("a").epsilon == 1.0
    with Ledger(url) as led:
        with pytest.raises(UsageError, match="NUL"):
            led.charge("a", mechanism="m", budget=PureDP(0.1), event=_lap().event(), note="a\0b")
        assert len(led.events(kinds=ALL_KINDS)) == 2


def test_postgres_backup_is_a_verifiable_sqlite_ledger(
    postgres_server: str, tmp_path: Path
) -> None:
    url = new_schema(postgres_server)
    with Ledger(url, default_budget=PureDP(50.0)) as led:
        led.record_run({"purpose": "test"})
        for i in range(6):
            _charge_laplace(led, f"s{i % 3}")
        _release(led, "s0", "k", value=7.0)
        unit = led.face_unit(led.unit_digest(b"photo"), (1, 2, 30, 40))
        led.finish_run({"faces": 7})
        head = led.verify().head
        digest = led.unit_digest(b"photo")
        dest = led.backup(tmp_path / "copy.db")
        with pytest.raises(FileExistsError):
            led.backup(dest)
        runs = led.runs()
    with Ledger(dest, create=False) as copy:
        assert copy.backend == "sqlite"
        check = copy.verify()
        assert check.ok and check.head == head and check.entries == 10
        assert copy.unit_digest(b"photo") == digest
        assert copy.face_unit(digest, (1, 2, 30, 40)) == unit
        stored = copy.pseudonym("s0", "k")
        assert stored is not None and stored[0] == 7.0
        assert copy.runs() == runs and copy.spent("s1").epsilon == 2.0


def _open_same(url: str, barrier: Any, out: Any) -> None:
    barrier.wait(timeout=60)
    with Ledger(url) as led:
        out.put(led.unit_digest(b"photo"))


def test_postgres_processes_creating_one_new_ledger_at_once_share_it(postgres_server: str) -> None:
    url = new_schema(postgres_server)
    ctx = mp.get_context("spawn")
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_same, args=(url, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len({out.get(timeout=5) for _ in procs}) == 1  # one ledger, one secret
    with Ledger(url) as led:
        assert led.verify().ok


def test_postgres_the_command_line_takes_a_ledger_url(postgres_server: str) -> None:
    from typer.testing import CliRunner

    from dpface.cli import app
    from dpface.config import AnonymizeConfig

    url = new_schema(postgres_server)
    with Ledger(url, default_budget=PureDP(5.0)) as led:
        _charge_laplace(led, "alice")
    # options typed as Path lose a slash of the URL: the configuration restores it
    for given in (url, Path(url)):
        assert AnonymizeConfig(ledger=given).ledger == url  # type: ignore[arg-type]
    runner = CliRunner()
    res = runner.invoke(app, ["ledger", "verify", url])
    assert res.exit_code == 0 and "the chain verifies" in res.output, res.output
    res = runner.invoke(app, ["ledger", "verify", new_schema(postgres_server)])
    assert res.exit_code == 2 and "no dpface ledger" in res.output, res.output


def test_importing_dpface_and_its_ledger_imports_no_postgres_driver() -> None:
    code = (
        "import sys, dpface, dpface.ledger\n"
        "from dpface import Ledger\n"
        "assert 'psycopg' not in sys.modules, 'psycopg imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_postgres_a_lost_connection_or_a_lock_wait_is_a_ledger_error(postgres_server: str) -> None:
    import psycopg

    url = new_schema(postgres_server)
    with Ledger(url, default_budget=PureDP(10.0), timeout=1.0) as led:
        _charge_laplace(led, "a")
        # another writer holds subject a's lock: this one waits at most `timeout`, then gives up
        with psycopg.connect(url) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s::int4, hashtext('a'))", (0x64706663,))
            with pytest.raises(LedgerError, match="not granted within the timeout"):
                _charge_laplace(led, "a")
            _charge_laplace(led, "b")  # other subjects are not held up
        _charge_laplace(led, "a")  # released with the other transaction
        # the server drops the connection: an error saying so, nothing half-recorded
        pid = led._conn.info.backend_pid
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(LedgerError, match="lost the PostgreSQL ledger"):
            _charge_laplace(led, "a")
    with Ledger(url) as again:
        assert len(again.events("a")) == 2 and len(again.events("b")) == 1
        assert again.verify().ok


def test_a_local_ledger_moves_onto_a_server_with_its_chain_and_secret(
    postgres_server: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "local.db"
    with Ledger(path, default_budget=PureDP(3.0)) as led:
        led.record_run({"purpose": "archive, part 1"})
        for _ in range(4):
            with contextlib.suppress(BudgetExceeded):
                _charge_laplace(led, "alice")
        led.change_budget("bob", PureDP(5.0), reason="consent")
        _release(led, "bob", "k", value=3.0)
        photo = led.unit_digest(b"photo")
        unit = led.face_unit(photo, (0, 0, 40, 40))
        led.finish_run({"photos": 1})
        head, runs = led.verify().head, led.runs()
        url = new_schema(postgres_server)
        where = led.backup(url)
        assert isinstance(where, str) and where.startswith("postgresql://")
        with pytest.raises(FileExistsError, match="not empty"):
            led.backup(url)  # never over an existing ledger
    with Ledger(url) as moved:
        check = moved.verify()
        assert check.ok and check.head == head and check.entries == 7
        assert (
            moved.unit_digest(b"photo") == photo and moved.face_unit(photo, (1, 0, 41, 40)) == unit
        )
        assert moved.runs() == runs and moved.spent("alice").epsilon == 3.0
        stored = moved.pseudonym("bob", "k")
        assert stored is not None and stored[0] == 3.0
        with pytest.raises(BudgetExceeded):
            _charge_laplace(moved, "alice")  # the budget spent locally stays spent
        assert moved.verify().ok
