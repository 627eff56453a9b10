"""Resumable, idempotent jobs (dpface.manifest) under real process kills.

A job is killed with SIGKILL at the worst moment -- a face's release is committed in the
ledger but its photo's output is not written yet -- and then resumed with ``--resume``. The
resumed job must end with the same files, the same receipts (statuses, units' spent and
remaining budgets) and the same ledger totals as an uninterrupted run: nothing charged twice,
nothing lost, the chain verifying. Once for a Dask cluster (worker processes and the driver
killed) on a real PostgreSQL ledger, once for the local worker pool (``--workers 2``: the
whole process group killed) on SQLite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpface import AnonymizeConfig, assets_dir
from dpface.ledger import Ledger
from dpface.manifest import JOB_DIR

pytest_plugins = ("tests.ledger_backends",)

PHOTOS = ("face-api-sample1.jpg", "fr-biden.jpg", "face-api-sample2.jpg", "fr-obama.jpg")
SETTINGS = ("-m", "identity-laplace", "--epsilon", "3", "--budget", "9")


def _photos(tmp: Path) -> Path:
    folder = tmp / "photos"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).write_bytes((assets_dir() / "samples" / name).read_bytes())
    return folder


def _dpface() -> str:
    return str(Path(sys.executable).parent / "dpface")


def _receipts(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(out.rglob("*.receipt.json")):
        try:
            found[path.relative_to(out).as_posix()] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def _faces(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Per receipt, every face's status and what its unit spent and has left (units are
    digests keyed by each ledger's secret, so compared by position)."""
    return {
        name: [
            (f["status"], f["refused"], f["protection"], f["spent"], f["remaining_epsilon"])
            for f in r["faces"]
        ]
        for name, r in _receipts(out).items()
    }


def _files(out: Path) -> list[str]:
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and JOB_DIR not in p.parts
    )


def _events_in_receipts(out: Path) -> set[int]:
    return {
        int(f["ledger_event"])
        for r in _receipts(out).values()
        for f in r["faces"]
        if f.get("ledger_event") is not None
    }


def _ledger_totals(location: str) -> tuple[int, float, list[int], int]:
    """(release entries, epsilon released in total, release ids, kept draws left)."""
    with Ledger(location) as led:
        check = led.verify()
        assert check.ok, check.problems
        releases = led.events(kinds=("release",))
        kept = int(led._conn.execute("SELECT count(*) FROM pseudonyms").fetchone()[0])
    ids = sorted(int(e["id"]) for e in releases)
    return len(ids), round(sum(float(e["epsilon"]) for e in releases), 9), ids, kept


def _release_ids(location: str) -> set[int]:
    with Ledger(location) as led:
        return {int(e["id"]) for e in led.events(kinds=("release",))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted local run of the same photos and settings."""
    tmp = tmp_path_factory.mktemp("reference")
    photos = _photos(tmp)
    ledger = str(tmp / "ref.db")
    out = tmp / "out"
    config = AnonymizeConfig(
        mechanism="identity-laplace", epsilon=3.0, budget=9.0, ledger=Path(ledger), workers=1
    )
    summary = config.run([photos], out)
    assert summary.failed == 0 and summary.replaced >= 4
    count, total, _, kept = _ledger_totals(ledger)
    assert kept == 0  # a finished job keeps no draws
    return {"files": _files(out), "faces": _faces(out), "releases": count, "epsilon": total}


def _kill_in_the_window(
    proc: subprocess.Popen[bytes],
    ledger: str,
    out: Path,
    kill: Callable[[], None],
    *,
    wait: bool = True,
) -> set[int]:
    """Wait until a release is committed whose photo has no receipt yet, then ``kill``;
    the orphaned release ids at that moment (re-read after the kill)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the job ended (exit code {proc.returncode}) before it could be killed")
        try:
            orphans = _release_ids(ledger) - _events_in_receipts(out)
        except Exception:  # the ledger is not created yet
            orphans = set()
        if orphans and (out / JOB_DIR / "done").is_dir():  # one photo finished, one in flight
            kill()
            if not wait:
                return orphans
            proc.wait(timeout=60)
            return _release_ids(ledger) - _events_in_receipts(out)
        time.sleep(0.05)
    pytest.fail("no moment with a charged but unwritten photo was seen")


def _check_same_as_reference(out: Path, ledger: str, reference: dict[str, Any]) -> None:
    assert _files(out) == reference["files"]
    assert _faces(out) == reference["faces"]  # spent/remaining: nothing charged twice
    count, total, ids, kept = _ledger_totals(ledger)
    assert (count, total) == (reference["releases"], reference["epsilon"])
    assert set(ids) == _events_in_receipts(out)  # every release is in exactly one output
    assert kept == 0
    job = json.loads((out / JOB_DIR / "job.json").read_text())
    assert job["finished"] is True


def test_killing_dask_workers_mid_job_then_resuming_charges_nothing_twice(
    postgres_server: str, tmp_path: Path, reference: dict[str, Any]
) -> None:
    from dask.distributed import Client, LocalCluster
    from typer.testing import CliRunner

    from dpface.cli import app
    from tests.ledger_backends import new_schema

    photos = _photos(tmp_path)
    ledger = new_schema(postgres_server)
    out = tmp_path / "out"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        address = cluster.scheduler_address
        before = client.run(os.getpid)
        pids = list(before.values())
        proc = subprocess.Popen(
            [_dpface(), "anonymize", str(photos), "-o", str(out), *SETTINGS,
             "--ledger", ledger, "--engine", "dask", "--address", address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def kill() -> None:
            proc.send_signal(signal.SIGKILL)  # the driver: nothing reschedules the tasks
            for pid in pids:
                os.kill(pid, signal.SIGKILL)  # the workers, mid-photo

        orphans = _kill_in_the_window(proc, ledger, out, kill)
        assert orphans, "the kill came after every charged photo was written"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the nannies restart the workers
            workers = set(client.scheduler_info()["workers"])
            if len(workers) == 2 and not workers & set(before):
                break
            time.sleep(0.2)
        assert not set(client.run(os.getpid).values()) & set(pids)
        done_before = len(list((out / JOB_DIR / "done").rglob("*.json")))
        assert 1 <= done_before < len(PHOTOS)
        result = CliRunner().invoke(
            app,
            ["anonymize", str(photos), "-o", str(out), *SETTINGS, "--ledger", ledger,
             "--engine", "dask", "--address", address, "--resume", "--json"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["skipped"] == done_before
    assert summary["failed"] == 0 and summary["images"] == len(PHOTOS)
    _check_same_as_reference(out, ledger, reference)


@pytest.mark.slow  # about a minute; the required kill-and-resume tests are above and below
def test_a_dask_worker_killed_mid_photo_is_rerun_by_dask_without_a_second_charge(
    postgres_server: str, tmp_path: Path, reference: dict[str, Any]
) -> None:
    """Only the workers die (the driver lives): Dask reruns their tasks on the restarted
    workers within the same run, and the rerun gets back the values already paid for."""
    from dask.distributed import Client, LocalCluster

    from tests.ledger_backends import new_schema

    photos = _photos(tmp_path)
    ledger = new_schema(postgres_server)
    out = tmp_path / "out"
    log = tmp_path / "summary.json"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        open(log, "wb") as sink,
    ):
        pids = list(client.run(os.getpid).values())
        proc = subprocess.Popen(
            [_dpface(), "anonymize", str(photos), "-o", str(out), *SETTINGS, "--ledger", ledger,
             "--engine", "dask", "--address", cluster.scheduler_address, "--json"],
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def kill() -> None:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

        orphans = _kill_in_the_window(proc, ledger, out, kill, wait=False)
        assert orphans, "the kill came after every charged photo was written"
        assert proc.wait(timeout=600) == 0
    summary = json.loads(log.read_text())
    # a photo written (and recorded) just before its worker died is skipped by the rerun
    assert summary["failed"] == 0 and summary["images"] == len(PHOTOS)
    _check_same_as_reference(out, ledger, reference)


def test_killing_the_local_worker_pool_mid_job_then_resuming_charges_nothing_twice(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    photos = _photos(tmp_path)
    ledger = str(tmp_path / "l.db")
    out = tmp_path / "out"
    command = [_dpface(), "anonymize", str(photos), "-o", str(out), *SETTINGS, "--ledger", ledger]
    proc = subprocess.Popen(
        [*command, "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the pool's worker is in it too
    )
    orphans = _kill_in_the_window(proc, ledger, out, lambda: os.killpg(proc.pid, signal.SIGKILL))
    assert orphans, "the kill came after every charged photo was written"
    time.sleep(0.5)  # the spawned worker dies with its group
    resumed = subprocess.run(
        [*command, "--workers", "2", "--resume", "--json"], capture_output=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] >= 1 and summary["failed"] == 0
    assert not [p for p in out.rglob("*.tmp")]  # a killed writer's temp files are removed
    _check_same_as_reference(out, ledger, reference)


def test_resume_with_other_settings_is_refused_and_a_plain_rerun_is_a_new_job(
    tmp_path: Path,
) -> None:
    """--resume refuses a job started with other settings (nothing read or charged); without
    --resume the same folder is a new job that releases and charges again."""
    from typer.testing import CliRunner

    from dpface.cli import app

    photo = assets_dir() / "samples" / "fr-biden.jpg"
    ledger = str(tmp_path / "l.db")
    out = tmp_path / "out"
    base = ["anonymize", str(photo), "-o", str(out), "--ledger", ledger, "-m", "dp-pix"]
    first = CliRunner().invoke(app, [*base, "--epsilon", "2", "--json"])
    assert first.exit_code == 0, first.output
    before = _ledger_totals(ledger)
    other = CliRunner().invoke(app, [*base, "--epsilon", "3", "--resume"])
    assert other.exit_code == 2 and "other settings" in other.output
    assert _ledger_totals(ledger)[:2] == before[:2]
    report = (out / "report.json").read_bytes()
    again = CliRunner().invoke(app, [*base, "--epsilon", "2", "--resume", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 1
    assert _ledger_totals(ledger)[:2] == before[:2]  # skipped: nothing charged
    assert (out / "report.json").read_bytes() == report  # the report of the run that wrote it
    new = CliRunner().invoke(app, [*base, "--epsilon", "2", "--json"])
    assert new.exit_code == 0 and json.loads(new.stdout).get("skipped", 0) == 0
    assert _ledger_totals(ledger)[0] == 2 * before[0]  # a new job is a new release
