"""Concurrent writers on one ledger, both backends: real processes, one subject, no overspend.

Every test runs against an SQLite file and a real PostgreSQL server (tests/ledger_backends.py).
The processes start together at a barrier and charge as fast as they can; whatever the
interleaving, exactly the releases that fit are granted, each refusal is an entry, and the hash
chain verifies afterwards.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from typing import Any

import numpy as np
import pytest

from dpface.ledger import BudgetExceeded, Ledger
from mechanisms.budgets import ApproxDP, PureDP
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace

pytest_plugins = ("tests.ledger_backends",)  # ledger_at, backend, postgres_server

ALL_KINDS = ("release", "refusal", "budget")
PROCESSES = 8


def _run(target: Any, args_for: Any, n: int = PROCESSES) -> list[Any]:
    """Start ``n`` spawned processes at one barrier; their results, in no particular order."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _charger(location: str, subject: str, eps: float, tries: int, barrier: Any, out: Any) -> None:
    mech = Laplace(epsilon=eps, sensitivity=1.0)
    granted = []
    with Ledger(location) as led:
        barrier.wait(timeout=120)
        for _ in range(tries):
            try:
                c = led.charge(
                    subject, mechanism="laplace", budget=mech.guarantee.budget, event=mech.event()
                )
                granted.append(c.id)
            except BudgetExceeded:
                pass
    out.put(granted)


def test_processes_charging_one_subject_get_exactly_what_fits(ledger_at: Any) -> None:
    budget, eps = 10.0, 0.75  # 13 releases fit (9.75), the 14th would make 10.5
    path = ledger_at("race.db")
    with Ledger(path) as led:
        led.set_budget("shared", PureDP(budget))
    tries = 6
    results = _run(_charger, lambda i: (str(path), "shared", eps, tries))
    fits = math.floor(budget / eps + 1e-9)
    granted = [i for r in results for i in r]
    assert len(granted) == fits and len(set(granted)) == fits
    with Ledger(path) as led:
        assert len(led.events("shared")) == fits
        assert len(led.events("shared", kinds=("refusal",))) == PROCESSES * tries - fits
        assert led.spent("shared").epsilon == pytest.approx(fits * eps)
        assert led.spent("shared").epsilon <= budget
        check = led.verify()
        assert check.ok, check.problems
        assert check.entries == 1 + PROCESSES * tries
        ids = [e["id"] for e in led.events(kinds=ALL_KINDS)]
        assert ids == list(range(1, len(ids) + 1))  # one chain, no gaps


def _mixed(location: str, worker: int, barrier: Any, out: Any) -> None:
    """Charges on three subjects, pseudonym releases and face units, interleaved."""
    lap = Laplace(epsilon=1.0, sensitivity=1.0)
    args = {"mechanism": "laplace", "budget": lap.guarantee.budget, "event": lap.event()}
    granted: dict[str, int] = {}
    vectors = []
    with Ledger(location, default_budget=PureDP(5.0)) as led:
        barrier.wait(timeout=120)
        for step in range(6):
            subject = f"s{(worker + step) % 3}"
            try:
                led.charge(subject, **args)
                granted[subject] = granted.get(subject, 0) + 1
            except BudgetExceeded:
                pass
            rel = led.release(
                "person",
                key="k",
                draw=lambda: np.frombuffer(os.urandom(32), dtype="<u8").astype(np.float64),
                **args,
            )
            vectors.append(rel.vector.tobytes())
            led.face_unit(led.unit_digest(b"one photo"), (10, 10, 50 + step % 2, 50))
    out.put((granted, vectors))


def test_mixed_writers_never_overspend_any_subject_nor_publish_two_pseudonyms(
    ledger_at: Any,
) -> None:
    path = ledger_at("mixed.db")
    Ledger(path).close()
    results = _run(_mixed, lambda i: (str(path), i))
    totals: dict[str, int] = {}
    for granted, _ in results:
        for s, n in granted.items():
            totals[s] = totals.get(s, 0) + n
    assert totals == {"s0": 5, "s1": 5, "s2": 5}  # 16 tries each, 5 fit
    assert len({v for _, vs in results for v in vs}) == 1  # one identity for "person"
    with Ledger(path) as led:
        for s in ("s0", "s1", "s2"):
            assert len(led.events(s)) == 5 and led.spent(s).epsilon == 5.0
        assert len(led.events("person")) == 1  # charged once, reused by everyone else
        assert led.subjects() == ["person", "s0", "s1", "s2"]
        check = led.verify()
        assert check.ok, check.problems


def _gaussian_charger(location: str, tries: int, barrier: Any, out: Any) -> None:
    mech = Gaussian(epsilon=1.0, delta=1e-7, sensitivity=2.0)
    ok = 0
    with Ledger(location, composition="pld") as led:
        barrier.wait(timeout=120)
        for _ in range(tries):
            try:
                led.charge(
                    "g", mechanism="gaussian", budget=mech.guarantee.budget, event=mech.event()
                )
                ok += 1
            except BudgetExceeded:
                pass
    out.put(ok)


def test_pld_composition_under_concurrency_grants_what_one_writer_would(ledger_at: Any) -> None:
    """With PLD accounting the number of releases that fit is not a division: it is what one
    writer, charging alone, is granted -- and concurrent writers must get exactly as many."""
    mech = Gaussian(epsilon=1.0, delta=1e-7, sensitivity=2.0)
    budget = ApproxDP(6.0, 1e-5)
    with Ledger(":memory:", composition="pld") as alone:
        alone.set_budget("g", budget)
        fits = 0
        while True:
            try:
                alone.charge(
                    "g", mechanism="gaussian", budget=mech.guarantee.budget, event=mech.event()
                )
                fits += 1
            except BudgetExceeded:
                break
    assert fits > 6  # tighter than the basic sum
    path = ledger_at("pld.db")
    with Ledger(path, composition="pld") as led:
        led.set_budget("g", budget)
    n = 4
    tries = math.ceil((fits + 4) / n)
    granted = sum(_run(_gaussian_charger, lambda i: (str(path), tries), n=n))
    assert granted == fits
    with Ledger(path, composition="pld") as led:
        assert len(led.events("g")) == fits
        assert led.spent("g").epsilon <= budget.epsilon
        assert led.verify().ok


# ====================================================================== a distributed job
def _faces(receipt_dir: Any) -> dict[str, list[tuple[Any, ...]]]:
    import json
    from pathlib import Path

    out = {}
    for path in sorted(Path(receipt_dir).rglob("*.receipt.json")):
        r = json.loads(path.read_text())
        out[path.name] = [
            (
                # an unnamed face's unit is a digest keyed by its own ledger's secret
                "face:*" if str(f["unit"]).startswith("face:") else f["unit"],
                f["status"],
                f.get("refused"),
                f.get("protection"),
                f.get("spent"),
                f.get("remaining_epsilon"),
            )
            for f in r["faces"]
        ]
    return out


def test_a_dask_job_with_two_workers_shares_budgets_like_a_local_run(
    postgres_server: str,
    tmp_path: Any,
) -> None:
    """Photos of one named person spread over two Dask workers, one PostgreSQL ledger: the
    budget is spent and refused exactly where one local process spends and refuses it, and the
    receipts say the same."""
    from dpface import AnonymizeConfig, assets_dir, distributed
    from tests.ledger_backends import new_schema

    samples = assets_dir() / "samples"
    photos = [
        samples / n
        for n in (
            "fr-obama.jpg",
            "fr-obama2.jpg",
            "fr-obama3.jpg",
            "fr-obama_partial_face.jpg",
            "fr-biden.jpg",
        )
    ]
    runs = {}
    for how in ("local", "dask"):
        config = AnonymizeConfig(
            mechanism="dp-pix",
            epsilon=2.0,
            budget=4.0,
            ledger=new_schema(postgres_server),
            workers=1,
        )
        out = tmp_path / how
        if how == "local":
            summary = config.run(photos, out, subject="obama")
        else:
            summary = distributed.run(
                config, photos, out, subject="obama", engine="dask", workers=2
            )
        with Ledger(str(config.ledger)) as led:
            assert led.verify().ok
            runs[how] = (
                summary.counts,
                _faces(out),
                len(led.events("obama")),
                len(led.events("obama", kinds=("refusal",))),
            )
    local, dask = runs["local"], runs["dask"]
    assert dask == local
    counts, faces, releases, refusals = dask
    assert releases == 2 and refusals == counts["refused"] >= 2  # the budget holds two
    refused_at = [name for name, fs in faces.items() for f in fs if f[0] == "obama" and f[2]]
    assert refused_at  # refused where the local run refused (the same receipts, above)
