"""The SQLite privacy ledger: refusal before noise, races, crashes, composition."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dp_accounting import dp_event

from dpface.ledger import BudgetExceeded, Ledger, event_from_json, event_to_json
from mechanisms.budgets import ApproxDP, PureDP
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace


def _charge_laplace(ledger: Ledger, subject: str, eps: float = 1.0) -> None:
    mech = Laplace(epsilon=eps, sensitivity=1.0)
    ledger.charge(subject, mechanism="laplace", budget=mech.guarantee.budget, event=mech.event())


def test_charges_until_the_budget_is_spent_then_refuses(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as led:
        led.set_budget("alice", PureDP(3.0))
        for _ in range(3):
            _charge_laplace(led, "alice")
        with pytest.raises(BudgetExceeded, match="left") as info:
            _charge_laplace(led, "alice")
        assert "no noise was drawn" in str(info.value)
        assert len(led.events("alice")) == 3  # the refused release left no trace
        assert led.spent("alice").epsilon == pytest.approx(3.0)
        assert led.remaining("alice") == pytest.approx(0.0)


def test_partial_budget_is_respected(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as led:
        led.set_budget("bob", PureDP(1.5))
        _charge_laplace(led, "bob")
        with pytest.raises(BudgetExceeded):
            _charge_laplace(led, "bob")
        _charge_laplace(led, "bob", eps=0.5)
        assert led.remaining("bob") == pytest.approx(0.0, abs=1e-12)


def test_unknown_subject_needs_a_budget(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as led, pytest.raises(KeyError, match="set_budget"):
        _charge_laplace(led, "carol")
    with Ledger(tmp_path / "l.db", default_budget=PureDP(2.0)) as led:
        _charge_laplace(led, "carol")
        assert led.budget("carol") == ApproxDP(2.0, 0.0)


def test_budget_cannot_drop_below_spending(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as led:
        led.set_budget("dan", PureDP(5.0))
        _charge_laplace(led, "dan", eps=2.0)
        with pytest.raises(BudgetExceeded):
            led.set_budget("dan", PureDP(1.0))
        led.set_budget("dan", PureDP(10.0))
        assert led.remaining("dan") == pytest.approx(8.0)


def test_ledger_persists_across_opens(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(path) as led:
        led.set_budget("eve", PureDP(4.0))
        _charge_laplace(led, "eve")
    with Ledger(path) as led:
        assert led.spent("eve").epsilon == pytest.approx(1.0)
        assert (
            event_from_json(led.events("eve")[0]["dp_event"])
            == Laplace(epsilon=1.0, sensitivity=1.0).event()
        )


def test_pld_composition_charges_repeated_gaussians_less_than_basic(tmp_path: Path) -> None:
    """Averaging n releases of one person is an attack; the ledger charges every release, and
    the tight (PLD) total grows like sqrt(n) rather than n."""
    mech = Gaussian(epsilon=1.0, delta=1e-6, sensitivity=2.0)
    totals = {}
    for comp in ("basic", "pld"):
        with Ledger(tmp_path / f"{comp}.db", composition=comp) as led:
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


def test_event_json_round_trip() -> None:
    ev = dp_event.ComposedDpEvent(
        [
            dp_event.PoissonSampledDpEvent(0.05, dp_event.LaplaceDpEvent(2.0)),
            dp_event.GaussianDpEvent(3.0),
        ]
    )
    assert event_from_json(event_to_json(ev)) == ev


def _racer(path: str, tries: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
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


def test_four_processes_racing_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    with Ledger(path) as led:
        led.set_budget("shared", PureDP(10.0))
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_racer, args=(str(path), 8, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    granted = sum(out.get(timeout=5) for _ in procs)
    with Ledger(path) as led:
        assert granted == 10 == len(led.events("shared"))
        assert led.spent("shared").epsilon == pytest.approx(10.0)


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


def test_a_killed_process_loses_no_committed_event(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    with Ledger(path) as led:
        led.set_budget("victim", PureDP(1000.0))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
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
    assert len(reported) == 20
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with Ledger(path) as led:
        ids = {e["id"] for e in led.events("victim")}
    assert set(reported) <= ids  # every event the child saw committed is still there


def test_a_refusal_for_delta_says_delta_ran_out(tmp_path: Path) -> None:
    from mechanisms.accounting import pure_event

    led = Ledger(tmp_path / "l.db")
    led.set_budget("s", ApproxDP(20.0, 2e-6))
    for _ in range(2):
        led.charge("s", mechanism="m", budget=ApproxDP(1.0, 1e-6), event=pure_event(1.0))
    with pytest.raises(BudgetExceeded, match="delta to 3e-06") as err:
        led.charge("s", mechanism="m", budget=ApproxDP(1.0, 1e-6), event=pure_event(1.0))
    assert "epsilon would still fit" in str(err.value) and len(led.events("s")) == 2
