"""Ledger throughput: committed charges per second with 1-32 concurrent writers, SQLite and
PostgreSQL, on this machine.

    .venv/bin/python scripts/bench_ledger.py [--writers 1,2,4,8,16,32] [--seconds 5]
        [--postgres URL] [--out docs/results/ledger.md | --no-write]

A *writer* is a separate process with its own :class:`dpface.ledger.Ledger` (as a worker of a
batch or of a cluster is); a *charge* is one :meth:`Ledger.charge` call that commits (one
transaction: budget check, hash-chained entry, commit). The writer processes are started once
and reused; for every cell of the table each of the first N writers opens a fresh ledger, all
start at the same instant and charge as fast as they can for ``--seconds``; charges/s is the
number committed in that window divided by its length, and latency is per charge. Two loads:

* ``distinct``: each writer charges its own 100 subjects in turn (many people, the common case);
* ``one subject``: every writer charges the same subject (the worst case: one row, one lock).

PostgreSQL is a real server: ``--postgres URL`` (an empty schema is created per cell), or by
default a server started from the ``pgserver`` wheel in a temporary folder (Unix socket, default
settings: ``fsync`` and ``synchronous_commit`` on). SQLite is a file in a temporary folder (WAL,
``synchronous=FULL``). Both are durable per commit. Client processes and the server share this
machine's cores, so the numbers are for one box; the table says how many cores it had.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
from scripts.bench_anonymize import _commit  # noqa: E402  (the shared machine helpers)
from scripts.local_postgres import start_postgres  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "results" / "ledger.md"
LOADS = ("distinct", "one subject")
SUBJECTS_PER_WRITER = 100


# ====================================================================== writers
def _writer(inbox: Any, outbox: Any) -> None:
    """A writer process: for each task, open the ledger, wait for the start, charge, report."""
    from dpface.ledger import BudgetExceeded, Ledger
    from mechanisms.budgets import PureDP
    from mechanisms.laplace import Laplace

    mech = Laplace(epsilon=0.001, sensitivity=1.0)
    args = {"mechanism": "laplace", "budget": mech.guarantee.budget, "event": mech.event()}
    outbox.put("ready")
    while True:
        task = inbox.get()
        if task is None:
            return
        location, load, index, start, seconds = task
        latencies: list[float] = []
        refused = 0
        with Ledger(location, default_budget=PureDP(1e6)) as led:
            names = (
                [f"w{index}-{k}" for k in range(SUBJECTS_PER_WRITER)]
                if load == "distinct"
                else ["shared"]
            )
            for _ in range(20):  # warm up (lazy imports, prepared statements), not counted
                led.charge(f"warm-up-{index}", **args)
            time.sleep(max(0.0, start - time.time()))
            end = start + seconds
            k = 0
            while True:
                t0 = time.perf_counter()
                if time.time() >= end:
                    break
                try:
                    led.charge(names[k % len(names)], **args)
                except BudgetExceeded:
                    refused += 1
                latencies.append(time.perf_counter() - t0)
                k += 1
        outbox.put((len(latencies), refused, latencies))


class Writers:
    """``n`` writer processes, started once (each imports dpface once)."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.inboxes = [ctx.Queue() for _ in range(n)]
        self.outbox = ctx.Queue()
        self.procs = [
            ctx.Process(target=_writer, args=(q, self.outbox), daemon=True) for q in self.inboxes
        ]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            if self.outbox.get(timeout=600) != "ready":
                raise RuntimeError("a writer did not start")

    def run(self, location: str, load: str, n: int, seconds: float) -> dict[str, Any]:
        start = time.time() + 2.0 + 0.1 * n  # time for every writer to open and warm up
        for i in range(n):
            self.inboxes[i].put((location, load, i, start, seconds))
        replies = [self.outbox.get(timeout=seconds + 600) for _ in range(n)]
        count = sum(r[0] for r in replies)
        lat = sorted(x for r in replies for x in r[2])
        return {
            "writers": n,
            "load": load,
            "charges": count,
            "refused": sum(r[1] for r in replies),
            "per_s": count / seconds,
            "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
        }

    def close(self) -> None:
        for q in self.inboxes:
            q.put(None)
        for p in self.procs:
            p.join(timeout=30)


# ====================================================================== locations
def _postgres_location(server: str) -> str:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in server else "?"
    return f"{server}{sep}options=-csearch_path%3D{schema}"


def _server_facts(server: str) -> str:
    import psycopg

    with psycopg.connect(server) as con:
        version = con.execute("SHOW server_version").fetchone()[0]
        fsync = con.execute("SHOW fsync").fetchone()[0]
        sync = con.execute("SHOW synchronous_commit").fetchone()[0]
    return f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync})"


def _fsync_rate(folder: Path) -> str:
    """fdatasync of one 8 kB write per second on ``folder``'s disk (pg_test_fsync, bundled
    with pgserver): the ceiling of one-at-a-time durable commits."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        return "not measured (pgserver missing)"
    target = folder / "fsync-test.tmp"
    try:
        out = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_test_fsync"), "-s", "2", "-f", str(target)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "not measured"
    finally:
        target.unlink(missing_ok=True)
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["fdatasync"] and "ops/sec" in line:
            return f"{float(parts[1]):.0f} fdatasync/s ({float(parts[3]) / 1000:.2f} ms each)"
    return "not measured"


# ====================================================================== report
def _table(rows: list[dict[str, Any]], writers: list[int]) -> str:
    lines = [
        "| writers | "
        + " | ".join(f"{b} {load}" for b in ("SQLite", "PostgreSQL") for load in LOADS)
        + " |",
        "| ---: | " + " | ".join("---:" for _ in range(2 * len(LOADS))) + " |",
    ]
    for n in writers:
        cells = []
        for b in ("sqlite", "postgresql"):
            for load in LOADS:
                got = [x for x in rows if (x["backend"], x["load"], x["writers"]) == (b, load, n)]
                if not got:
                    cells.append("-")
                    continue
                rate = statistics.median(x["per_s"] for x in got)
                p50 = statistics.median(x["p50_ms"] for x in got)
                p95 = statistics.median(x["p95_ms"] for x in got)
                lo, hi = min(x["per_s"] for x in got), max(x["per_s"] for x in got)
                spread = f" [{lo:.0f}-{hi:.0f}]" if len(got) > 1 else ""
                cells.append(f"{rate:.0f}/s{spread} ({p50:.1f} / {p95:.1f} ms)")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ====================================================================== engines
def _noop(x: int) -> int:
    return x


def _engine_overhead(engine: str, workers: int, tasks: int) -> dict[str, float]:
    """Seconds to start a local cluster of ``workers`` processes, and ms per no-op task."""
    t = time.perf_counter()
    if engine == "dask":
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        client.gather(client.map(_noop, range(workers), pure=False))
        started = time.perf_counter() - t
        t = time.perf_counter()
        client.gather(client.map(_noop, range(tasks), pure=False))
        per_task = (time.perf_counter() - t) / tasks
        client.close()
        cluster.close()
    else:
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(_noop)
        ray.get([remote.remote(i) for i in range(workers)])
        started = time.perf_counter() - t
        t = time.perf_counter()
        ray.get([remote.remote(i) for i in range(tasks)])
        per_task = (time.perf_counter() - t) / tasks
        ray.shutdown()
    return {"start_s": started, "task_ms": 1000 * per_task}


def _engine_job(engine: str | None, workers: int, server: str, mechanism: str) -> dict[str, Any]:
    """The 16 sample photos, ``mechanism``, on a fresh PostgreSQL ledger: wall seconds (cluster
    start, model loading and everything else included) and the run's own images/s."""
    from dpface import AnonymizeConfig, assets_dir, distributed

    photos = sorted(p for p in (assets_dir() / "samples").iterdir() if p.suffix in (".jpg", ".png"))
    out = Path(tempfile.mkdtemp(prefix="dpface-bench-engine-")) / "out"
    config = AnonymizeConfig(
        mechanism=mechanism, ledger=_postgres_location(server), workers=workers
    )
    t = time.perf_counter()
    if engine is None:
        summary = config.run(photos, out)
    else:
        summary = distributed.run(config, photos, out, engine=engine, workers=workers)
    wall = time.perf_counter() - t
    return {
        "engine": engine or "local",
        "workers": workers,
        "wall_s": wall,
        "images": summary.counts.get("images", 0),
        "faces": summary.counts.get("faces", 0),
        "images_per_s": summary.counts.get("images", 0) / summary.seconds,
        "problems": len(summary.problems),
    }


def engines_main(opts: argparse.Namespace) -> int:
    server, handle = (opts.postgres, None) if opts.postgres else start_postgres("dpface-bench-pg-")
    rows = []
    for engine in ("dask", "ray"):
        r = _engine_overhead(engine, 2, opts.tasks)
        print(
            f"{engine}: start {r['start_s']:.1f} s, {r['task_ms']:.2f} ms per no-op task",
            flush=True,
        )
        rows.append((engine, r))
    jobs = []
    for engine, workers in ((None, 1), (None, 2), ("dask", 2), ("ray", 2)):
        j = _engine_job(engine, workers, server, opts.mechanism)
        print(j, flush=True)
        jobs.append(j)
    if handle is not None:
        handle.cleanup()  # stop and delete the server now (not left to atexit)
    base = jobs[0]["wall_s"]
    lines = [
        "## Engines",
        "",
        f"Written by `.venv/bin/python scripts/bench_ledger.py --engines` on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit {_commit()}, "
        f"{os.cpu_count()} cores, 1-minute load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| engine | local cluster of 2 processes started in | per no-op task |",
        "| --- | ---: | ---: |",
        *(f"| {e} | {r['start_s']:.1f} s | {r['task_ms']:.2f} ms |" for e, r in rows),
        "",
        f"The 16 sample photos (`-m {opts.mechanism}`), one fresh PostgreSQL ledger each, wall "
        "time from the call to its return (cluster start and model loading included; images/s "
        "is the run's own, after set-up):",
        "",
        "| run | workers | wall s | vs local, 1 worker | images/s | images | faces | problems |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {j['engine']} | {j['workers']} | {j['wall_s']:.1f} | {base / j['wall_s']:.2f}x "
            f"| {j['images_per_s']:.2f} | {j['images']} | {j['faces']} | {j['problems']} |"
            for j in jobs
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not opts.no_write:
        old = opts.out.read_text() if opts.out.exists() else "# Ledger throughput\n"
        old = old.split("\n## Engines\n")[0].rstrip("\n")
        opts.out.write_text(old + "\n\n" + text)
        print(f"written to {opts.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", default="1,2,4,8,16,32")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1, help="rounds over every cell (median)")
    ap.add_argument("--postgres", help="a PostgreSQL server URL (default: start one)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--engines",
        action="store_true",
        help="instead: Dask against Ray (start, per-task overhead, the sample "
        "photos with 2 workers on a PostgreSQL ledger against a local run)",
    )
    ap.add_argument("--tasks", type=int, default=500, help="no-op tasks per engine (--engines)")
    ap.add_argument("--mechanism", default="dp-pix", help="for --engines")
    opts = ap.parse_args(argv)
    if opts.engines:
        return engines_main(opts)
    writers = sorted({int(x) for x in opts.writers.split(",")})
    backends = [b.strip() for b in opts.backends.split(",")]

    server, handle = (opts.postgres, None) if opts.postgres else (None, None)
    if "postgresql" in backends and server is None:
        server, handle = start_postgres("dpface-bench-pg-")
    pg_facts = _server_facts(server) if server else ""
    tmp = Path(tempfile.mkdtemp(prefix="dpface-bench-ledger-"))
    fsync_before = _fsync_rate(tmp)
    pool = Writers(max(writers))
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    cells = [(b, load, n) for b in backends for load in LOADS for n in writers]
    try:
        for round_ in range(opts.repeat):  # rounds interleaved: slow spells hit every cell
            for backend, load, n in cells:
                if backend == "sqlite":
                    location = str(tmp / f"{uuid.uuid4().hex}.db")
                else:
                    assert server is not None
                    location = _postgres_location(server)
                r = pool.run(location, load, n, opts.seconds)
                rows.append(r | {"backend": backend, "round": round_})
                print(
                    f"{backend:10s} {load:12s} writers={n:2d}  {r['per_s']:8.1f} charges/s  "
                    f"p50 {r['p50_ms']:6.1f} ms  p95 {r['p95_ms']:6.1f} ms",
                    flush=True,
                )
    finally:
        pool.close()
        if handle is not None:
            handle.cleanup()  # stop and delete the server now (not left to atexit)
    load_after = os.getloadavg()
    fsync_after = _fsync_rate(tmp)
    cores = os.cpu_count()
    text = "\n".join(
        [
            "# Ledger throughput",
            "",
            "Committed charges per second (`Ledger.charge`, one durable transaction each) with "
            "N concurrent writer processes, each with its own `Ledger`: the median over the "
            "rounds, [lowest-highest] when there are several, and in brackets the median / 95th "
            "percentile latency of one charge. Written by `scripts/bench_ledger.py` "
            "(method in its docstring).",
            "",
            f"* date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit {_commit()}",
            f"* machine: {platform.machine()}, {cores} cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; writers, server and disk "
            "on this one machine; 1-minute load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (other work on the machine "
            "shows here)",
            f"* SQLite {__import__('sqlite3').sqlite_version} (WAL, synchronous=FULL); "
            f"{pg_facts or 'PostgreSQL not measured'}",
            f"* the disk (pg_test_fsync, one 8 kB write): {fsync_before} before, {fsync_after} "
            "after the run",
            f"* command: `.venv/bin/python scripts/bench_ledger.py --writers {opts.writers} "
            f"--seconds {opts.seconds:g} --repeat {opts.repeat}`, {opts.seconds:g} s per cell, "
            f"{opts.repeat} round(s) over all cells",
            "",
            _table(rows, writers),
            "",
        ]
    )
    print(text)
    if not opts.no_write:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(text)
        print(f"written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
