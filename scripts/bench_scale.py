"""How throughput grows with workers: ``dpface anonymize`` with 1 and 2 workers, local and Dask.

    .venv/bin/python -m scripts.bench_scale [--repeat 2] [--wait-idle 0.3] [-m dp-pix]
        [--write docs/results/scale.md]

Every case is the whole command (process start to every output written) on the bundled
sample photos, run as a subprocess with a fresh output folder and a fresh SQLite ledger:

* ``local 1``: ``--workers 1`` -- one process, the baseline of the same run;
* ``local 2``: ``--workers 2`` -- the local pool (this process and one spawned worker);
* ``dask 1`` / ``dask 2``: ``--engine dask --workers N`` -- a Dask LocalCluster of N
  single-threaded worker processes started by the command.

Reported per case (fastest of ``--repeat`` interleaved rounds): wall seconds; batch seconds
(the command's own ``seconds``: from the first photo handed out to the last outcome, so model
loading in the caller and cluster start are outside it); images/s over the batch; the ratio to
``local 1`` of the same round; start-up (wall - batch); and the engine's overhead per image
(Dask's batch seconds minus the local batch seconds at the same worker count, per photo).
The machine is shared with other jobs: every run records the cores other processes used
meanwhile (from /proc/stat) and the load average before it, printed beside the numbers;
``--wait-idle CORES`` starts each run only once others use fewer cores (at most 5 minutes).
This is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_anonymize import (  # noqa: E402  (the shared machine helpers)
    _commit,
    _load,
    _machine,
    _machine_busy,
    _samples,
    _wait_idle,
)

CASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("local 1", ("--workers", "1")),
    ("local 2", ("--workers", "2")),
    ("dask 1", ("--engine", "dask", "--workers", "1")),
    ("dask 2", ("--engine", "dask", "--workers", "2")),
)


@dataclass
class Run:
    wall: float
    batch: float
    images: int
    others: float | None
    load: str


@dataclass
class Case:
    name: str
    args: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.batch)


def _one(args: tuple[str, ...], photos: Path, mechanism: str, tmp: Path) -> Run:
    out, ledger = tmp / "out", tmp / "ledger.db"
    shutil.rmtree(out, ignore_errors=True)
    ledger.unlink(missing_ok=True)
    dpface = str(Path(sys.executable).parent / "dpface")
    argv = [dpface, "anonymize", str(photos), "-o", str(out), "--ledger", str(ledger)]
    argv += ["-m", mechanism, "--budget", "1000", "--json", *args]
    load = _load()
    busy = _machine_busy()
    t = time.perf_counter()
    r0 = os.times()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t
    r1 = os.times()
    after = _machine_busy()
    ours = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    # Dask workers are grandchildren reaped by the nanny: their CPU may be missing from
    # ``ours``, which then overstates the others' share; said in the output
    others = None if busy is None or after is None else max(0.0, after - busy - ours) / wall
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"[bench_scale] {' '.join(argv)} exited {proc.returncode}:\n{tail}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    if summary.get("failed"):
        raise SystemExit(f"[bench_scale] {summary['failed']} photo(s) failed: {summary}")
    return Run(wall, float(summary["seconds"]), int(summary["inputs"]), others, load)


def measure(repeat: int, idle: float | None, mechanism: str) -> tuple[list[Case], float]:
    photos = _samples()
    cases = [Case(n, a) for n, a in CASES]
    waited = 0.0
    with tempfile.TemporaryDirectory(prefix="dpface-bench-scale-") as tmp:
        for r in range(repeat):
            for case in cases:
                if idle is not None:
                    waited += _wait_idle(idle)
                run = _one(case.args, photos, mechanism, Path(tmp))
                case.runs.append(run)
                print(
                    f"[bench_scale] round {r + 1}/{repeat} {case.name}: wall {run.wall:.1f}s, "
                    f"batch {run.batch:.1f}s, {run.images / run.batch:.2f} img/s, others "
                    f"{'?' if run.others is None else f'{run.others:.2f}'} cores, load "
                    f"{run.load}",
                    file=sys.stderr,
                )
    return cases, waited


def table(cases: list[Case], info: dict[str, Any]) -> str:
    base = next(c for c in cases if c.name == "local 1").best()
    by = {c.name: c.best() for c in cases}
    n = base.images
    lines = [
        "# Scaling: images/s with 1 and 2 workers (local pool and Dask)",
        "",
        f"Measured {info['date']} with `{info['command']}` (commit {info['commit']}).",
        f"Machine: {info['machine']['cpu']}; {info['machine']['system']}.",
        f"Workload: the {n} bundled sample photos, `-m {info['mechanism']}`, a fresh SQLite "
        "ledger and output folder per run; fastest of "
        f"{info['repeat']} interleaved round(s) by batch time.",
        "",
        "| case | wall s | batch s | images/s | vs local 1 | start-up s | others' cores | "
        "load avg (1/5/15 min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in cases:
        b = c.best()
        others = "?" if b.others is None else f"{b.others:.2f}"
        lines.append(
            f"| {c.name} | {b.wall:.1f} | {b.batch:.1f} | {b.images / b.batch:.2f} | "
            f"{(b.images / b.batch) / (base.images / base.batch):.2f}x | "
            f"{b.wall - b.batch:.1f} | {others} | {b.load} |"
        )
    lines += [
        "",
        "Engine overhead per image (Dask batch s - local batch s, same workers, / photos):",
        "",
    ]
    for w in ("1", "2"):
        d, loc = by.get(f"dask {w}"), by.get(f"local {w}")
        if d is not None and loc is not None:
            lines.append(
                f"* {w} worker(s): {1000 * (d.batch - loc.batch) / n:+.0f} ms per image "
                f"(start-up: Dask {d.wall - d.batch:.1f} s, local {loc.wall - loc.batch:.1f} s)"
            )
    lines += [
        "",
        "Every round (batch s, images/s relative to `local 1` of the SAME round, others' cores):",
        "",
    ]
    base_runs = next(c for c in cases if c.name == "local 1").runs
    for c in cases:
        runs = ", ".join(
            f"round {i + 1}: {r.batch:.1f} s, {b.batch / r.batch:.2f}x, "
            f"{'?' if r.others is None else f'{r.others:.2f}'}"
            for i, (r, b) in enumerate(zip(c.runs, base_runs, strict=True))
        )
        lines.append(f"* {c.name}: {runs}")
    lines += [
        "",
        "How to read it: *batch s* runs from the first photo handed out to the last outcome; "
        "*start-up* is the rest of the command (Python start, model loading in the calling "
        "process, starting and stopping the worker pool or cluster, writing the report). "
        "*others' cores* is the average number of cores the machine spent on processes "
        "outside this command while it ran (from /proc/stat; for Dask the workers' CPU is not "
        "always counted as ours, so that figure can overstate the others). This machine is "
        "shared with other jobs: a case that ran while others used a core is slower than it "
        "would be alone -- read the ratios together with that column."
        + (
            f" Each run waited until others used under {info['idle']:g} cores (in all "
            f"{info['waited']:.0f} s of waiting)."
            if info.get("idle") is not None
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--wait-idle", type=float, default=None, metavar="CORES")
    ap.add_argument("-m", "--mechanism", default="dp-pix")
    ap.add_argument("--write", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args()
    cases, waited = measure(args.repeat, args.wait_idle, args.mechanism)
    command = f"python -m scripts.bench_scale --repeat {args.repeat} -m {args.mechanism}"
    if args.wait_idle is not None:
        command += f" --wait-idle {args.wait_idle:g}"
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "commit": _commit(),
        "machine": _machine(),
        "mechanism": args.mechanism,
        "repeat": args.repeat,
        "idle": args.wait_idle,
        "waited": waited,
    }
    text = table(cases, info)
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)


if __name__ == "__main__":
    main()
