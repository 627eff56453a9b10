"""Whole-command speed of ``dpface anonymize`` against deface on the 16 bundled sample photos.

    ./dev bench speed [--repeat N] [--out docs/results/speed.md]     (also run by ./dev bench)
    .venv/bin/python scripts/bench_anonymize.py [--repeat N] [--out FILE | --no-write]

Every measurement is one command run the way a user runs it, timed by the wall clock from
process start to exit (models loaded, every output and receipt written):

* ``dpface anonymize SAMPLES -m dp-blur`` and ``dpface anonymize SAMPLES`` (the default
  identity-laplace), each with ``--workers 1`` and with the default worker count;
* ``deface FOLDER`` (its command line, same photos, default settings), the baseline, on a fresh
  copy of the photos each time because deface writes its outputs beside its inputs.

Every dpface run gets a fresh ledger and output folder. With ``--repeat N`` the commands are
interleaved N times and the fastest run of each is reported (other processes on the machine
only ever add time), with every run listed and the CPU time of each command's process tree.
The table (seconds, ratio to deface's time in the same run, the issue's targets), the command,
date, commit and machine are written to ``docs/results/speed.md`` and printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "speed.md"
# issue 15: whole process on the 16 sample photos, same run as deface
TARGETS = {"dp-blur": 1.5, "identity-laplace": 2.5}


@dataclass
class Case:
    label: str
    argv: list[str]
    mechanism: str | None = None  # None: deface
    workers: str | None = None  # "1" or None (the default)
    detector: str | None = None  # None: the default detector (the targets are for it)
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    others: list[float | None] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def best_cpu(self) -> float:
        return self.cpu[self.seconds.index(self.best)]

    @property
    def best_others(self) -> str:
        value = self.others[self.seconds.index(self.best)]
        return "" if value is None else f"{value:.2f}"


def _tool(name: str) -> str | None:
    """A console script of this environment (beside its python), else one on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def _samples() -> Path:
    sys.path.insert(0, str(ROOT))
    from dpface.models.store import assets_dir

    return assets_dir() / "samples"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _machine_busy() -> float | None:
    """CPU seconds the whole machine has spent not idle (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_idle(limit: float, most: float = 300.0) -> float:
    """Wait until other processes use less than ``limit`` cores over 2 s (at most ``most``
    seconds); the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < most:
        a = _machine_busy()
        time.sleep(2.0)
        b = _machine_busy()
        if a is None or b is None or (b - a) / 2.0 < limit:
            break
    return time.monotonic() - t0


def _run(argv: list[str], cwd: Path) -> tuple[float, float, float | None, str]:
    """Wall seconds, CPU seconds of the whole process tree, cores used meanwhile by other
    processes on the machine (average; None if unknown), and stdout of one command."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cpu = _children_cpu()
    busy = _machine_busy()
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    cpu = _children_cpu() - cpu
    after = _machine_busy()
    others = None if busy is None or after is None else max(0.0, after - busy - cpu) / seconds
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"[bench_anonymize] {' '.join(argv)} exited {proc.returncode}:\n{tail}")
    return seconds, cpu, others, proc.stdout


def _machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError):
        pass
    versions = []
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("dpface", "deface", "onnxruntime", "torch", "dlib", "opencv-python-headless"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            continue
    return {
        "cpu": f"{cpu}, {cores} usable core(s)" + (f", {mem}" if mem else ""),
        "system": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "packages": ", ".join(versions),
    }


def _commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "dpface", "mechanisms"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" with uncommitted changes in dpface/ or mechanisms/" if dirty else "")


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def measure(repeat: int, idle: float | None = None) -> tuple[list[Case], dict[str, Any]]:
    samples = _samples()
    photos = sorted(p for p in samples.iterdir() if p.is_file())
    dpface, deface = _tool("dpface"), _tool("deface")
    if dpface is None:
        raise SystemExit("[bench_anonymize] the dpface command is not installed (./dev setup)")
    cases: list[Case] = []
    if deface is not None:
        cases.append(Case("deface (its defaults: blur, CenterFace)", [deface]))
    for mech in ("dp-blur", "identity-laplace"):
        for workers in ("1", None):
            argv = [dpface, "anonymize", str(samples), "--json"]
            argv += ["-m", mech] if mech != "identity-laplace" else []
            argv += ["--workers", workers] if workers else []
            shown = f"dpface anonymize{' -m ' + mech if mech != 'identity-laplace' else ''}"
            shown += f" --workers {workers}" if workers else ""
            cases.append(Case(shown, argv, mech, workers))
    # the speed/recall trade-off a user can choose: CenterFace alone at the same search scale,
    # no turned copies (its recall is the `centerface` column of docs/results/recall.md)
    argv = [dpface, "anonymize", str(samples), "--json", "-m", "dp-blur"]
    argv += ["--detector", "centerface"]
    cases.append(
        Case(
            "dpface anonymize -m dp-blur --detector centerface", argv, "dp-blur", None, "centerface"
        )
    )
    info: dict[str, Any] = {"photos": len(photos), "load_before": _load()}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dpface-speed-") as tmp:
        work = Path(tmp)
        for r in range(repeat):
            for n, case in enumerate(cases):
                run_dir = work / f"r{r}-c{n}"
                run_dir.mkdir()
                if idle is not None:
                    info["waited"] = info.get("waited", 0.0) + _wait_idle(idle)
                if case.mechanism is None:
                    src = run_dir / "photos"
                    src.mkdir()
                    for p in photos:
                        shutil.copy(p, src / p.name)
                    seconds, cpu, others, _ = _run([*case.argv, str(src)], run_dir)
                else:
                    argv = [
                        *case.argv,
                        "-o",
                        str(run_dir / "out"),
                        "--ledger",
                        str(run_dir / "ledger.db"),
                    ]
                    seconds, cpu, others, out = _run(argv, run_dir)
                    case.summaries.append(json.loads(out))
                case.seconds.append(seconds)
                case.cpu.append(cpu)
                case.others.append(others)
                print(
                    f"[bench_anonymize] run {r + 1}/{repeat}: {case.label}: {seconds:.1f} s"
                    + ("" if others is None else f" (other processes: {others:.2f} cores)"),
                    file=sys.stderr,
                )
    info["load_after"] = _load()
    info["started"] = dt.datetime.fromtimestamp(started, dt.UTC)
    info["deface"] = deface is not None
    return cases, info


def table(cases: list[Case], info: dict[str, Any], repeat: int, command: str) -> str:
    base = cases[0].best if info["deface"] else None
    machine = _machine()
    how = (
        f"the fastest of {repeat} interleaved runs (other processes only ever add time; every "
        "run is listed)"
        if repeat > 1
        else "one run of each (`--repeat N` runs each N times, interleaved)"
    )
    lines = [
        "# Speed: the whole `dpface anonymize` command against deface",
        "",
        f"Command: `{command}` (`scripts/bench_anonymize.py`), "
        f"{info['started']:%Y-%m-%d %H:%M} UTC, commit {_commit()}.",
        "",
        f"Machine: {machine['cpu']}; {machine['system']}; {machine['packages']}. "
        f"Load average (1/5/15 min) before: {info['load_before']}, after: "
        f"{info['load_after']} (other processes share this machine).",
        "",
        f"Each time is one command on the {info['photos']} bundled sample photos, process start "
        f"to exit (models loaded, every output written), wall clock; {how}. CPU s: user + "
        "system time of the command and every process it started, in that run; others: the "
        "cores other processes on the machine used meanwhile (on average). Each dpface "
        "run has a fresh ledger and output folder; deface runs on a fresh copy of the photos "
        "(it writes beside its inputs).",
        "",
        "| command | workers | seconds | all runs | CPU s | others | photos/s | × deface's time "
        "| target | met |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        workers = "1"
        if case.summaries:
            used = sorted({str(s.get("workers", "?")) for s in case.summaries})
            workers = ", ".join(used) + ("" if case.workers else " (default)")
        ratio = case.best / base if base else None
        default = case.workers is None and case.detector is None
        target = TARGETS.get(case.mechanism or "") if default else None
        met = "" if target is None or ratio is None else ("yes" if ratio <= target else "**no**")
        lines.append(
            f"| `{case.label}` | {workers} | {case.best:.1f} | "
            f"{', '.join(f'{s:.1f}' for s in case.seconds)} | {case.best_cpu:.1f} | "
            f"{case.best_others} | "
            f"{info['photos'] / case.best:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}×'} | "
            f"{'' if target is None else f'≤ {target}×'} | {met} |"
        )
    if not info["deface"]:
        lines += ["", "deface is not installed here: no baseline, no ratios."]
    if "waited" in info:
        lines += [
            "",
            f"Before each command the benchmark waited until other processes used less than "
            f"{info['idle']} core(s) (`--wait-idle`): {info['waited']:.0f} s in all.",
        ]
    lines += [
        "",
        "Where the time goes, from the same run's own `--json` summary (seconds summed over "
        "the photos and, with several workers, over the processes; process start, model "
        "loading and the run report are outside these stages):",
        "",
    ]
    for case in cases:
        if not case.summaries:
            continue
        s = case.summaries[case.seconds.index(case.best)]
        stages = sorted(s.get("stage_seconds", {}).items(), key=lambda kv: -kv[1])
        split = ", ".join(f"{k} {v:.1f}" for k, v in stages)
        inside = s.get("seconds", 0.0)
        lines.append(
            f"* `{case.label}`: {s.get('faces')} faces ({s.get('replaced')} replaced, "
            f"{s.get('pixelized')} pixelized, {s.get('masked')} masked); "
            f"{inside:.1f} s inside the batch, {case.best - inside:.1f} s "
            f"before and after it (start-up, models, report); by stage: {split}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of every command")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown table")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument(
        "--wait-idle",
        type=float,
        metavar="CORES",
        help="before each command, wait (up to 5 min) until other processes use fewer cores",
    )
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    command = "./dev bench speed" + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
    command += f" --wait-idle {args.wait_idle:g}" if args.wait_idle is not None else ""
    cases, info = measure(args.repeat, args.wait_idle)
    info["idle"] = args.wait_idle
    text = table(cases, info, args.repeat, command)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"[bench_anonymize] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
