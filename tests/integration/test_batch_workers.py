"""``dpface anonymize --workers``: a pool of processes gives the results of one process.

Runs use ``-m dp-pix`` with the HOG detector on a few single-face sample photos (fast, and the
faces found do not depend on which process looks). The two ledgers compared are copies of one
fresh ledger, so they share the unit secret and unnamed faces get the same units in both.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from dpface import batch
from dpface.cli import app
from dpface.config import AnonymizeConfig
from dpface.errors import UsageError
from dpface.ledger import Ledger
from dpface.models.store import assets_dir
from dpface.pipeline import Anonymizer

SAMPLES = assets_dir() / "samples"
ONE_FACE = ("fr-obama2.jpg", "fr-obama.jpg", "fr-biden.jpg")  # one face each under HOG
runner = CliRunner()
SECRET = "Alice at home, 51.5N 0.1W"


def _config(ledger: Path, **kw: Any) -> AnonymizeConfig:
    return AnonymizeConfig(mechanism="dp-pix", epsilon=2.0, detector="hog", ledger=ledger, **kw)


def _folder(tmp_path: Path, *, broken: bool = False, duplicate: bool = False) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ONE_FACE:
        shutil.copy(SAMPLES / name, folder / name)
    with Image.open(SAMPLES / "fr-obama.jpg") as im:  # the same photo, with metadata
        exif = Image.Exif()
        exif[0x010E] = SECRET  # ImageDescription
        im.save(folder / "fr-obama.jpg", exif=exif, quality=95)
    if duplicate:  # the same photo twice (first and second): one unnamed-face unit
        shutil.copy(SAMPLES / "fr-biden.jpg", folder / "fr-biden-copy.jpg")
    if broken:
        (folder / "z-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return folder


def _twin_ledgers(tmp_path: Path) -> tuple[Path, Path]:
    fresh = tmp_path / "fresh.db"
    Ledger(fresh).close()
    a, b = tmp_path / "serial.db", tmp_path / "pool.db"
    shutil.copy(fresh, a)
    shutil.copy(fresh, b)
    return a, b


def _receipts(out: Path) -> dict[str, Any]:
    """Every receipt without what differs between runs by design (time, run id, entry ids)."""
    found = {}
    for path in sorted(out.rglob("*.receipt.json")):
        r = json.loads(path.read_text())
        r.pop("time", None)
        r.get("ledger", {}).pop("run_id", None)
        for face in r.get("faces", []):
            face.pop("ledger_event")
        found[str(path.relative_to(out))] = r
    return found


def _entries(ledger: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Per subject, its ledger entries in order (kind, mechanism, epsilon, delta)."""
    with sqlite3.connect(ledger) as con:
        rows = con.execute(
            "SELECT subject, kind, mechanism, epsilon, delta FROM entries ORDER BY id"
        ).fetchall()
    per: dict[str, list[tuple[Any, ...]]] = {}
    for subject, *rest in rows:
        per.setdefault(subject, []).append(tuple(rest))
    return per


def _chunks(data: bytes) -> set[bytes]:
    """The chunk types of a PNG file."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = set(), 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        found.add(data[at + 4 : at + 8])
        at += 12 + length
    return found


def _outputs(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def _ready_build(config: AnonymizeConfig, flag: str) -> Anonymizer:
    """A worker's anonymiser that touches ``flag`` when it has found the faces of its first
    photo, just before that photo's ledger work."""
    import dpface.pipeline

    detect = dpface.pipeline.detect_array

    def detect_and_tell(*args: Any, **kwargs: Any) -> Any:
        found = detect(*args, **kwargs)
        Path(flag).touch()
        return found

    dpface.pipeline.detect_array = detect_and_tell  # in the worker process only
    return config.build_anonymizer()


def _pool_run(config: AnonymizeConfig, photos: Path, out: Path, **kw: Any) -> batch.BatchSummary:
    """Two processes, the worker's photo (the second) reaching the ledger first if nothing
    kept the input order: this process starts its first photo only once the worker has found
    the faces of its own."""
    flag = out.parent / f"{out.name}.worker-detected"
    anonymizer = config.build_anonymizer()
    real = anonymizer.anonymize
    waited: list[bool] = []

    def anonymize(*args: Any, **kwargs: Any) -> Any:
        if not waited:
            deadline = time.monotonic() + 60
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # unordered, the worker would charge now
            waited.append(True)
        return real(*args, **kwargs)

    anonymizer.anonymize = anonymize  # type: ignore[method-assign]
    try:
        summary = batch.run(
            anonymizer,
            batch.plan([photos], out),
            workers=2,
            build=functools.partial(_ready_build, config, str(flag)),
            **kw,
        )
    finally:
        anonymizer.ledger.close()
    assert flag.exists(), "the worker never took a photo"
    return summary


def test_two_workers_give_the_results_of_one(tmp_path: Path) -> None:
    photos = _folder(tmp_path, broken=True, duplicate=True)
    serial, pool = _twin_ledgers(tmp_path)
    results = {}
    for workers, ledger in ((1, serial), (2, pool)):
        out = tmp_path / f"out-{workers}"
        res = runner.invoke(
            app,
            [
                "anonymize",
                str(photos),
                "-o",
                str(out),
                "-m",
                "dp-pix",
                "--epsilon",
                "2",
                "--detector",
                "hog",
                "--ledger",
                str(ledger),
                "--workers",
                str(workers),
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        results[workers] = (json.loads(res.stdout), out)
    (one, out1), (two, out2) = results[1], results[2]
    assert two["workers"] == 2 and one["workers"] == 1
    for key in ("inputs", "images", "faces", "pixelized", "masked", "refused", "failed"):
        assert one[key] == two[key], key
    assert one["images"] == 4 and one["failed"] == 1 and one["faces"] == 4
    # the broken photo is reported (same words, same place) and the others are written
    assert one["problems"] == two["problems"]
    assert [p["input"] for p in two["problems"]] == [str(photos / "z-broken.jpg")]
    assert _outputs(out1) == _outputs(out2)
    assert {"fr-obama2.png", "fr-obama.png", "fr-biden.png", "fr-biden-copy.png"} <= set(
        _outputs(out2)
    )
    # receipts: same faces, units, spending (the copy's unit is charged twice) and outputs
    assert _receipts(out1) == _receipts(out2)
    spent = [f["spent"]["epsilon"] for f in _receipts(out2)["fr-biden.receipt.json"]["faces"]]
    assert spent == [4.0]
    # the ledger: the same entries for every subject, in the same order
    assert _entries(serial) == _entries(pool)
    # outputs are PNGs with no metadata (the input's EXIF is not carried over)
    for png in out2.rglob("*.png"):
        assert _chunks(png.read_bytes()) <= {b"IHDR", b"IDAT", b"IEND"}, png
        assert SECRET.encode() not in png.read_bytes()
    # the run report covers the whole run: every release of every process
    report = json.loads((out2 / "report.json").read_text())
    assert report["totals"]["releases"] == 4


def test_a_worker_waits_its_turn_at_the_ledger(tmp_path: Path) -> None:
    """The worker's photo (the second, the same file as the first: the same unit) is ready
    before the first: it still charges second."""
    photos = _folder(tmp_path, broken=True, duplicate=True)
    serial, pool = _twin_ledgers(tmp_path)
    one = _config(serial, workers=1).run([photos], tmp_path / "out-1")
    two = _pool_run(_config(pool), photos, tmp_path / "out-2")
    assert two.workers == 2 and two.counts == one.counts
    assert two.problems == one.problems
    assert _receipts(tmp_path / "out-1") == _receipts(tmp_path / "out-2")
    assert _entries(serial) == _entries(pool)


def test_a_named_subject_budget_binds_across_workers(tmp_path: Path) -> None:
    photos = _folder(tmp_path)
    serial, pool = _twin_ledgers(tmp_path)
    one = _config(serial, budget=4.0, workers=1).run(  # two releases' worth
        [photos], tmp_path / "out-1", subject="alice"
    )
    two = _pool_run(_config(pool, budget=4.0), photos, tmp_path / "out-2", subject="alice")
    assert two.workers == 2
    assert two.counts == one.counts
    assert two.pixelized == 2 and two.masked == 1 and two.refused == 1
    kinds = Counter(kind for kind, *_ in _entries(pool)["alice"])
    assert kinds["release"] == 2 and kinds["refusal"] == 1
    # refused in input order, as in one process: the last photo (fr-obama2) is the masked one,
    # and every receipt shows the spending of one process
    assert _entries(pool)["alice"] == _entries(serial)["alice"]
    assert _receipts(tmp_path / "out-1") == _receipts(tmp_path / "out-2")
    masked = json.loads((tmp_path / "out-2" / "fr-obama2.receipt.json").read_text())
    assert masked["faces"][0]["status"] == "masked"
    with Ledger(pool) as led:
        assert {r["run_id"] for r in led.runs()} == {two.run_id}
        assert {e["run_id"] for e in led.events("alice")} == {two.run_id}


# ---------------------------------------------------------------------- a worker that dies
def _crashing_build(config: AnonymizeConfig, flag: str) -> Anonymizer:
    """A worker's anonymiser that kills its process on the first photo it is given."""
    anonymizer = config.build_anonymizer()

    def die(*args: Any, **kwargs: Any) -> Any:
        os._exit(3)

    anonymizer.anonymize = die  # type: ignore[method-assign]
    Path(flag).write_text("ready")
    return anonymizer


def test_a_worker_that_dies_costs_only_its_photo(tmp_path: Path) -> None:
    photos = _folder(tmp_path)
    ledger = tmp_path / "ledger.db"
    config = _config(ledger, workers=2)
    flag = tmp_path / "worker-ready"
    anonymizer = config.build_anonymizer()
    real = anonymizer.anonymize

    def wait_for_the_worker(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 120
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the worker takes the next photo meanwhile
        return real(*args, **kwargs)

    anonymizer.anonymize = wait_for_the_worker  # type: ignore[method-assign]
    planned = batch.plan([photos], tmp_path / "out")
    try:
        summary = batch.run(
            anonymizer,
            planned,
            workers=2,
            build=functools.partial(_crashing_build, config, str(flag)),
        )
    finally:
        anonymizer.ledger.close()
    assert summary.failed == 1 and summary.images == 2
    (problem,) = summary.problems
    assert "stopped unexpectedly (exit code 3)" in problem.reason
    lost = Path(problem.input).name
    written = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert written == {Path(n).with_suffix(".png").name for n in ONE_FACE} - {
        Path(lost).with_suffix(".png").name
    }
    assert not list((tmp_path / "out").glob(".*.tmp"))


# ---------------------------------------------------------------------- the option
@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2", 10_000])
def test_bad_worker_counts_are_usage_errors(tmp_path: Path, bad: object) -> None:
    with pytest.raises(UsageError, match="workers"):
        _config(tmp_path / "l.db", workers=bad)


def test_workers_and_seed_or_memory_ledger(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--workers 1"):
        _config(tmp_path / "l.db", workers=2, seed=1)
    with pytest.raises(UsageError, match="in-memory"):
        _config(Path(":memory:"), workers=2)
    assert _config(tmp_path / "l.db", seed=1).worker_count() == 1
    assert _config(Path(":memory:")).worker_count() == 1
    assert _config(tmp_path / "l.db").worker_count() == batch.default_workers()
    assert _config(tmp_path / "l.db", workers=3).worker_count() == 3


def test_cli_refuses_zero_workers_before_any_work(tmp_path: Path) -> None:
    photos = _folder(tmp_path)
    ledger = tmp_path / "ledger.db"
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(photos),
            "-o",
            str(tmp_path / "out"),
            "--ledger",
            str(ledger),
            "--workers",
            "0",
        ],
    )
    assert res.exit_code == 2
    assert "workers" in res.output
    assert not ledger.exists() and not (tmp_path / "out").exists()


def test_workers_started_early_stop_when_the_run_is_refused(tmp_path: Path) -> None:
    import multiprocessing

    photos = _folder(tmp_path)
    blocked = tmp_path / "out"
    blocked.write_text("a file where the output folder should be")
    ledger = tmp_path / "ledger.db"
    with pytest.raises(UsageError, match="output folder"):
        _config(ledger, workers=2).run([photos], blocked)
    assert not multiprocessing.active_children()
    assert not ledger.exists()


def test_the_default_is_the_cores_the_memory_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "usable_cores", lambda: 64)
    monkeypatch.setattr(batch, "_available_memory", lambda: 9 * batch.WORKER_MEMORY)
    assert batch.default_workers() == 9
    monkeypatch.setattr(batch, "_available_memory", lambda: batch.WORKER_MEMORY // 2)
    assert batch.default_workers() == 1
    monkeypatch.setattr(batch, "_available_memory", lambda: 1 << 62)
    assert batch.default_workers() == 64
