"""``dpface anonymize --engine local|dask|ray [--address] [--workers N]`` through the CLI.

The library (AnonymizeConfig, dpface.distributed) validates; these tests check the command
line reaches it: a real Dask LocalCluster started by the command, clear usage errors (exit 2,
nothing charged) for an engine that is not installed, an address without an engine and an
address nobody answers at.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from dpface import assets_dir
from dpface.cli import app
from dpface.ledger import Ledger

PHOTOS = ("fr-biden.jpg", "face-api-sample3.jpg")


def _photos(tmp: Path) -> Path:
    folder = tmp / "in"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).write_bytes((assets_dir() / "samples" / name).read_bytes())
    return folder


def test_engine_dask_with_two_workers_runs_the_job_on_a_local_cluster(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    ledger, out = tmp_path / "l.db", tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["anonymize", str(photos), "-o", str(out), "-m", "dp-pix", "--ledger", str(ledger),
         "--engine", "dask", "--workers", "2", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["workers"] == 2 and summary["images"] == 2 and summary["failed"] == 0
    assert summary["pixelized"] == summary["faces"] >= 2
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    assert written == [
        "face-api-sample3.png",
        "face-api-sample3.receipt.json",
        "fr-biden.png",
        "fr-biden.receipt.json",
        "report.html",
        "report.json",
    ]
    with Ledger(ledger) as led:
        (run,) = led.runs()
        assert run["settings"]["engine"] == "dask"
        assert len(led.events(kinds=("release",))) == summary["faces"]
        assert led.verify().ok


def _cli(*args: str, block: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh interpreter; ``block``: a module made unimportable there
    (as on a machine where its package is not installed)."""
    code = "import sys\n"
    if block is not None:
        code += f"sys.modules[{block!r}] = None\n"
    code += "from dpface.cli import main\nsys.argv = ['dpface', *sys.argv[1:]]\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


def test_an_engine_that_is_not_installed_names_the_pip_extra(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    ledger = tmp_path / "l.db"
    base = ["anonymize", str(photos), "-o", str(tmp_path / "o"), "--ledger", str(ledger)]
    done = _cli(*base, "--engine", "dask", block="distributed")
    assert done.returncode == 2, done.stderr
    assert "pip install 'dpface[distributed]'" in done.stderr
    done = _cli(*base, "--engine", "ray", block="ray")
    assert done.returncode == 2 and "pip install ray" in done.stderr
    assert not ledger.exists() and not (tmp_path / "o").exists()  # nothing opened or written


def test_address_without_an_engine_and_an_unreachable_scheduler_are_usage_errors(
    tmp_path: Path,
) -> None:
    photos = _photos(tmp_path)
    ledger = tmp_path / "l.db"
    base = ["anonymize", str(photos), "-o", str(tmp_path / "o"), "--ledger", str(ledger)]
    local = CliRunner().invoke(app, [*base, "--address", "tcp://127.0.0.1:8786"])
    assert local.exit_code == 2 and "--engine dask or --engine ray" in local.output
    bogus = CliRunner().invoke(app, [*base, "--engine", "spark"])
    assert bogus.exit_code == 2
    t = time.monotonic()
    nobody = CliRunner().invoke(
        app, [*base, "-m", "dp-pix", "--engine", "dask", "--address", "tcp://127.0.0.1:9"]
    )
    assert nobody.exit_code == 2, nobody.output
    assert "cannot reach a dask scheduler" in nobody.output
    assert time.monotonic() - t < 60
    if ledger.exists():  # nothing was charged
        with Ledger(ledger) as led:
            assert led.events(kinds=("release", "refusal")) == []
