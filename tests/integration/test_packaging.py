"""dpface as a library users install (issue 20): the wheel and sdist, a clean virtual
environment outside the checkout, `dpface fetch` (real registry downloads, resumable, verified;
`--to`/`--from` offline transfer) and the DP core alone without torch.

The two virtual-environment tests install real packages with pip (torch==2.13.0 from this
machine's disk through pip's configured find-links, everything else from the package index or
pip's cache). Measured here: the DP core alone about 30 s (default suite); the photo pipeline
2.5 min on a quiet machine (pip install 89 s, a real fetch of the 167 MB of registry archives
3 s, --to/--from 7 s, one photo through the API and the CLI 15 s) and about 5 min while other
work shares the two cores (pip install 134 s) -- so it is marked ``slow``
(``./dev test -m slow tests/integration/test_packaging.py``).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from dpface import assets
from dpface._version import __version__
from dpface.models import store

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_ASSETS = store.assets_dir()  # resolved before any test redirects it


# --------------------------------------------------------------------------- helpers


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DPFACE_", "PYTHON", "VIRTUAL_ENV", "PYTEST", "COV_"))
    }
    env.update(extra)
    return env


def _run(
    args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _venv(where: Path) -> Path:
    """A clean virtual environment (no system site-packages) with pip; its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / "bin" / "python"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and wheel, built from a copy of the package sources (so the build writes
    nothing into the shared checkout) -- the wheel from the sdist, as `python -m build` does."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("dpface", "mechanisms"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _ok(
        _run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src],
            cwd=src,
            env=_clean_env(),
        )
    )
    wheels = list(out.glob("dpface-*.whl"))
    sdists = list(out.glob("dpface-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


# --------------------------------------------------------------------------- the files


def test_wheel_and_sdist_carry_package_data_and_no_assets(dist: dict[str, Path]) -> None:
    wheel = dist["wheel"]
    assert wheel.name == f"dpface-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"dpface-{__version__}.dist-info/METADATA").decode()
    for data in (
        "dpface/py.typed",
        "mechanisms/py.typed",
        "dpface/models/manifest.json",
        "dpface/data/measured.json",
        "dpface/templates/report.html.j2",
        "dpface/assets.py",
        "mechanisms/laplace.py",
    ):
        assert data in names, data
    # model weights, sample photos and built caches are fetched, never shipped
    assert not [n for n in names if n.endswith((".jpg", ".png", ".bin", ".dat", ".onnx", ".npz"))]
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "assets/"))]
    assert wheel.stat().st_size < 2_000_000
    # the DP core's requirements carry no torch; the photo pipeline is an extra
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if "torch" in r or "opencv" in r or "dlib" in r], core
    assert any("torch==2.13.0" in r and 'extra == "face"' in r for r in requires)
    for extra in ("face", "video", "distributed", "postgres", "eval", "docs"):
        assert f"Provides-Extra: {extra}" in meta, extra
    assert "Requires-Python: <3.14,>=3.11" in meta or "Requires-Python: >=3.11,<3.14" in meta
    with tarfile.open(dist["sdist"]) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"pyproject.toml", "dpface/models/manifest.json", "dpface/_version.py"} <= members


# --------------------------------------------------------------------------- installed


def test_core_alone_installs_and_runs_without_torch(dist: dict[str, Path], tmp_path: Path) -> None:
    t0 = time.perf_counter()
    py = _venv(tmp_path / "venv")
    env = _clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"), DPFACE_LEDGER=str(tmp_path / "l.db"))
    _ok(_run([py, "-m", "pip", "install", "--quiet", dist["wheel"]], cwd=tmp_path, env=env))
    installed = _ok(_run([py, "-m", "pip", "list", "--format=json"], cwd=tmp_path, env=env))
    names = {p["name"].lower() for p in json.loads(installed)}
    assert "dpface" in names
    assert not names & {"torch", "opencv-python", "dlib-bin", "onnxruntime", "insightface"}
    code = (
        "import sys, numpy as np\n"
        "import dpface, mechanisms\n"
        "from mechanisms import Laplace, PureDP\n"
        "lap = Laplace(epsilon=1.0, sensitivity=1.0)\n"
        "y = lap(np.zeros(4))\n"
        "assert y.shape == (4,) and np.isfinite(y).all()\n"
        "assert lap.guarantee.budget == PureDP(1.0)\n"
        "assert 'torch' not in sys.modules\n"
        "print(mechanisms.__file__, dpface.__version__)\n"
    )
    out = _ok(_run([py, "-c", code], cwd=tmp_path, env=env))
    assert str(tmp_path / "venv") in out and str(ROOT) not in out
    assert out.split()[-1] == __version__
    dpface_bin = tmp_path / "venv" / "bin" / "dpface"
    assert _ok(_run([dpface_bin, "--version"], cwd=tmp_path, env=env)).strip() == (
        f"dpface {__version__}"
    )
    # the face pipeline is absent: a clear error, not a traceback
    (tmp_path / "in").mkdir()
    shutil.copy(CHECKOUT_ASSETS / "samples" / "fr-obama.jpg", tmp_path / "in" / "a.jpg")
    proc = _run(
        [dpface_bin, "anonymize", tmp_path / "in", "-o", tmp_path / "out"], cwd=tmp_path, env=env
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'dpface[face]'" in proc.stderr
    print(f"core-only venv: {time.perf_counter() - t0:.0f} s")


@pytest.mark.slow  # 2.5 min on a quiet machine, 5 min on a busy one (mostly pip)
def test_installed_wheel_fetches_transfers_offline_and_anonymises(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    t0 = time.perf_counter()
    py = _venv(tmp_path / "venv")
    bindir = tmp_path / "venv" / "bin"
    online = tmp_path / "online-cache"
    airgapped = tmp_path / "airgapped-cache"
    env = _clean_env(XDG_CACHE_HOME=str(online), DPFACE_LEDGER=str(tmp_path / "ledger.db"))
    _ok(
        _run(
            [py, "-m", "pip", "install", "--quiet", f"{dist['wheel']}[face]"],
            cwd=tmp_path,
            env=env,
            timeout=1500,
        )
    )
    t_install = time.perf_counter() - t0
    photo = CHECKOUT_ASSETS / "samples" / "fr-obama.jpg"
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(photo, work / "obama.jpg")

    # before any fetch: the run stops with an error that names the command
    proc = _run([bindir / "dpface", "anonymize", work, "-o", tmp_path / "early"], cwd=work, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "dpface fetch" in proc.stderr

    # a real fetch from the registries into the user cache (platformdirs: $XDG_CACHE_HOME)
    t1 = time.perf_counter()
    out = _ok(_run([bindir / "dpface", "fetch", "-q", "--no-build"], cwd=work, env=env))
    t_fetch = time.perf_counter() - t1
    assert f"{len(store.manifest())} files verified in {online / 'dpface' / 'assets'}" in out
    for f in store.manifest().values():
        if f.dest is not None:
            assert store.sha256_of(online / "dpface" / "assets" / f.dest) == f.sha256
    assert not list((online / "dpface" / "assets" / ".cache").glob("*.part"))

    # offline transfer: --to on the machine with network ...
    t3 = time.perf_counter()
    bundle = tmp_path / "usb"
    _ok(_run([bindir / "dpface", "fetch", "--to", bundle], cwd=work, env=env))
    index = json.loads((bundle / assets.BUNDLE_INDEX).read_text())
    assert index["dpface_version"] == __version__
    assert len(index["files"]) == sum(1 for f in store.manifest().values() if f.dest)
    # ... the surrogate bank (built by the checkout's set-up) travels with the files
    bank = next((CHECKOUT_ASSETS / ".cache").glob("surrogate-bank-*.npz"))
    (bundle / ".cache").mkdir(exist_ok=True)
    shutil.copy(bank, bundle / ".cache" / bank.name)
    index["derived"][f".cache/{bank.name}"] = {
        "what": "surrogate bank",
        "sha256": store.sha256_of(bank),
        "size": bank.stat().st_size,
    }
    (bundle / assets.BUNDLE_INDEX).write_text(json.dumps(index))
    # ... and --from on the air-gapped one (another cache; nothing to download)
    off_env = dict(env, XDG_CACHE_HOME=str(airgapped), no_proxy="", https_proxy="http://0.0.0.0:9")
    out = _ok(_run([bindir / "dpface", "fetch", "--from", bundle], cwd=work, env=off_env))
    assert "0.0 MB downloaded" in out
    assert (airgapped / "dpface" / "assets" / ".cache" / bank.name).is_file()
    t_transfer = time.perf_counter() - t3

    # the public API, from the installed package, on the transferred assets
    code = (
        "import json, sys\n"
        "import dpface\n"
        "from dpface import Anonymizer, Ledger, SurrogateGenerator, assets_dir\n"
        "from mechanisms import IdentityLaplace, PureDP\n"
        "assert '/venv/' in dpface.__file__, dpface.__file__\n"
        "gen = SurrogateGenerator()\n"
        "anon = Anonymizer(mechanism=IdentityLaplace(epsilon=6.0, dim=gen.identity_dim),\n"
        "    generator=gen, ledger=Ledger(sys.argv[2], default_budget=PureDP(30.0)))\n"
        "r = anon.anonymize(sys.argv[1], subject='obama')\n"
        "print(json.dumps({'status': r.faces[0].status, 'assets': str(assets_dir()),\n"
        "    'version': r.receipt['dpface_version']}))\n"
    )
    t2 = time.perf_counter()
    got = json.loads(
        _ok(_run([py, "-c", code, work / "obama.jpg", tmp_path / "api.db"], cwd=work, env=off_env))
    )
    assert got == {
        "status": "replaced",
        "assets": str(airgapped / "dpface" / "assets"),
        "version": __version__,
    }
    # ... and the command line
    cli_out = tmp_path / "cli-out"
    summary = json.loads(
        _ok(
            _run(
                [bindir / "dpface", "anonymize", work, "-o", cli_out, "--json"],
                cwd=work,
                env=off_env,
            )
        )
    )
    assert summary["replaced"] == 1 and summary["problems"] == []
    receipt = json.loads(next(cli_out.rglob("*.json")).read_text())
    assert receipt["dpface_version"] == __version__
    t_use = time.perf_counter() - t2
    shutil.rmtree(tmp_path / "venv")  # 1.8 GB
    print(
        f"install {t_install:.0f} s, fetch {t_fetch:.0f} s, --to/--from {t_transfer:.0f} s,"
        f" anonymise {t_use:.0f} s,"
        f" total {time.perf_counter() - t0:.0f} s"
    )


# --------------------------------------------------------------------------- in-process


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload; honours `Range: bytes=N-` unless `ranges` is False."""

    payload = b""
    ranges = True
    requests: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and self.ranges else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_RangeHandler]]]:
    handler = type("H", (_RangeHandler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/pkg.tgz", handler
    httpd.shutdown()
    httpd.server_close()


def _source(url: str, payload: bytes) -> store.Source:
    return store.Source(
        "t",
        "npm",
        "@x/pkg@1.0.0",
        "1.0.0",
        "MIT",
        url=url,
        archive_sha256=hashlib.sha256(payload).hexdigest(),
        archive_size=len(payload),
    )


@pytest.mark.parametrize("ranges", [True, False])
def test_interrupted_download_resumes(
    server: tuple[str, type[_RangeHandler]], tmp_path: Path, ranges: bool
) -> None:
    url, handler = server
    payload = os.urandom(3 << 20)
    handler.payload, handler.ranges = payload, ranges
    cache = tmp_path / ".cache"
    cache.mkdir()
    (cache / "pkg.tgz.part").write_bytes(payload[: 1 << 20])  # what an interruption left
    path, got = assets._download(_source(url, payload), cache, assets._Out(False))
    assert path == cache / "pkg.tgz" and path.read_bytes() == payload
    assert handler.requests == [f"bytes={1 << 20}-"]
    assert got == (2 << 20 if ranges else 3 << 20)  # without ranges: downloaded again whole
    assert not (cache / "pkg.tgz.part").exists()


def test_altered_download_is_deleted_and_refused(
    server: tuple[str, type[_RangeHandler]], tmp_path: Path
) -> None:
    url, handler = server
    payload = os.urandom(1 << 20)
    handler.payload = payload[:-1] + bytes([payload[-1] ^ 1])  # one bit flipped on the wire
    with pytest.raises(store.AssetError, match="does not match the manifest's sha256"):
        assets._download(_source(url, payload), tmp_path, assets._Out(False))
    assert list(tmp_path.iterdir()) == []


def test_unreachable_registry_names_the_remedy(tmp_path: Path) -> None:
    src = _source("http://127.0.0.1:9/pkg.tgz", b"x")
    with pytest.raises(store.AssetError, match=r"dpface fetch --to DIR.*dpface fetch --from"):
        assets._download(src, tmp_path, assets._Out(False))


@pytest.fixture
def bundle(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`fetch(to=...)` from the checkout's verified assets (no network)."""
    monkeypatch.delenv("DPFACE_ASSETS", raising=False)
    dest = tmp_path_factory.mktemp("bundle")
    result = assets.fetch(to=dest, progress=False)
    assert result.downloaded == {}
    return dest


def test_offline_transfer_verifies_every_file(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = json.loads((bundle / assets.BUNDLE_INDEX).read_text())
    assert index["schema"] == assets.BUNDLE_SCHEMA and index["dpface_version"] == __version__
    target = tmp_path / "airgapped"
    monkeypatch.setenv("DPFACE_ASSETS", str(target))
    # an altered file is refused, and nothing is installed under its name
    victim = next(f for f in store.manifest().values() if f.dest and f.dest.endswith(".bin"))
    assert victim.dest is not None
    original = (bundle / victim.dest).read_bytes()
    (bundle / victim.dest).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(store.AssetError, match="manifest says"):
        assets.fetch(from_dir=bundle, progress=False, build=False)
    assert not (target / victim.dest).exists()
    # a missing file is named, with the command that makes a complete folder
    (bundle / victim.dest).unlink()
    with pytest.raises(store.AssetError, match=r"lacks 1 file.*dpface fetch --to DIR"):
        assets.fetch(from_dir=bundle, progress=False, build=False)
    # the intact folder installs; every manifest file then verifies from the new place
    (bundle / victim.dest).write_bytes(original)
    result = assets.fetch(from_dir=bundle, progress=False, build=False)
    assert result.root == target and result.downloaded == {}
    assert len(result.paths) == len(store.manifest())
    for rel in index["derived"]:  # the built caches came along, checked against the index
        assert store.sha256_of(target / rel) == index["derived"][rel]["sha256"]
    # a second run only verifies
    again = assets.fetch(from_dir=bundle, progress=False, build=False)
    assert again.written == []


def test_fetch_command_line(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dpface.cli import app

    runner = CliRunner()
    got = runner.invoke(app, ["--version"])
    assert got.exit_code == 0 and got.output.strip() == f"dpface {__version__}"
    got = runner.invoke(app, ["fetch", "--to", str(tmp_path / "a"), "--from", str(bundle)])
    assert got.exit_code == 2 and "not both" in got.output
    monkeypatch.setenv("DPFACE_ASSETS", str(tmp_path / "assets"))
    got = runner.invoke(app, ["fetch", "--from", str(tmp_path / "nowhere"), "-q", "--no-build"])
    assert got.exit_code == 2 and "dpface fetch --to DIR" in got.output
    got = runner.invoke(app, ["fetch", "--from", str(bundle), "-q", "--no-build"])
    assert got.exit_code == 0, got.output
    assert f"{len(store.manifest())} files verified in {tmp_path / 'assets'}" in got.output
    assert "0.0 MB downloaded" in got.output
