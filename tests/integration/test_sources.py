"""Inputs and outputs beyond a folder (dpface.sources), through the command line.

fsspec URLs (``memory://`` here: the same code path as ``s3://``), a WebDataset tar shard
whose metadata members name the person and whose images carry EXIF text, and a Parquet table
with an image column and a caption column. Outputs mirror the input layout; nothing
identifying (metadata members, captions, EXIF, the URL, the staging folder, the input folder)
is written beside them; a corrupt image is a per-image problem named by its place in the
shard; a job into a URL resumes.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from dpface import assets_dir
from dpface.cli import app

SAMPLES = assets_dir() / "samples"
NAME = "Jane Roe of 12 Elm Street"  # what must never reach the outputs


def _jpeg_with_exif(name: str) -> bytes:
    img = Image.open(SAMPLES / name).convert("RGB")
    exif = Image.Exif()
    exif[0x010E] = NAME  # ImageDescription
    exif[0x013B] = NAME  # Artist
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=92)
    return buf.getvalue()


def _anonymize(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["anonymize", *args, "-m", "dp-pix", "--json"])
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def _nothing_identifying(files: dict[str, bytes], *secrets: str) -> None:
    for name, data in files.items():
        for secret in (NAME, "dpface-stage", *secrets):
            assert secret.encode() not in data, (name, secret)
        if name.endswith(".png"):
            chunks = _png_chunks(data)
            assert set(chunks) <= {b"IHDR", b"IDAT", b"IEND"}, (name, chunks)


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, i = [], 8
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        chunks.append(data[i + 4 : i + 8])
        i += 12 + n
    return chunks


def _local_files(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and ".dpface-job" not in p.parts
    }


def test_a_memory_url_folder_into_a_memory_url_mirrors_the_tree_and_resumes(
    tmp_path: Path,
) -> None:
    fs = fsspec.filesystem("memory")
    src, dst = f"/src-{tmp_path.name}/photos", f"/dst-{tmp_path.name}/out"
    fs.pipe(f"{src}/a/biden.jpg", _jpeg_with_exif("fr-biden.jpg"))
    fs.pipe(f"{src}/b/three.jpg", (SAMPLES / "face-api-sample3.jpg").read_bytes())
    ledger = str(tmp_path / "l.db")
    summary = _anonymize(f"memory://{src}", "-o", f"memory://{dst}", "--ledger", ledger)
    assert summary["images"] == 2 and summary["failed"] == 0
    assert summary["output"] == f"memory://{dst}"
    written = sorted(p[len(dst) + 1 :] for p in fs.find(dst) if "/.dpface-job/" not in p)
    assert written == [
        "a/biden.png",
        "a/biden.receipt.json",
        "b/three.png",
        "b/three.receipt.json",
        "report.html",
        "report.json",
    ]
    assert fs.exists(f"{dst}/.dpface-job/job.json")
    files = {p: fs.cat(f"{dst}/{p}") for p in written}
    _nothing_identifying(files, "memory://", src, str(tmp_path))
    receipt = json.loads(files["a/biden.receipt.json"])
    assert receipt["source"] == "a/biden.jpg" and receipt["output"] == "a/biden.png"
    again = _anonymize(f"memory://{src}", "-o", f"memory://{dst}", "--ledger", ledger, "--resume")
    assert again["skipped"] == 2 and again["pixelized"] == summary["pixelized"]
    assert fs.cat(f"{dst}/a/biden.png") == files["a/biden.png"]


def test_a_webdataset_shard_keeps_its_metadata_members_out_and_reports_a_corrupt_image(
    tmp_path: Path,
) -> None:
    shard = tmp_path / "shards" / "shard-000.tar"
    shard.parent.mkdir()
    members = {
        "k1.jpg": _jpeg_with_exif("fr-biden.jpg"),
        "k1.json": json.dumps({"name": NAME}).encode(),
        "k1.txt": NAME.encode(),
        "sub/k2.jpg": (SAMPLES / "face-api-sample3.jpg").read_bytes(),
        "k3.jpg": (SAMPLES / "fr-obama.jpg").read_bytes()[:600],  # truncated
    }
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    summary = _anonymize(
        str(shard), "-o", str(out), "--ledger", str(tmp_path / "l.db"), "--receipts-table"
    )
    assert summary["inputs"] == 3 and summary["images"] == 2 and summary["failed"] == 1
    (problem,) = summary["problems"]
    assert problem["input"] == f"{shard}:k3.jpg"
    assert "dpface-stage" not in problem["reason"]
    files = _local_files(out)
    assert sorted(files) == [
        "k1.png",
        "k1.receipt.json",
        "k3.receipt.json",
        "receipts.parquet",
        "report.html",
        "report.json",
        "sub/k2.png",
        "sub/k2.receipt.json",
    ]
    _nothing_identifying(files, str(shard.parent))
    table = pq.read_table(out / "receipts.parquet").to_pylist()
    assert sorted(r["output"] or "-" for r in table) == ["-", "k1.png", "sub/k2.png"]
    assert all(json.loads(r["json"])["schema"].startswith("dpface.receipt/") for r in table)


def test_a_parquet_table_with_an_image_column_writes_one_output_per_row_and_no_caption(
    tmp_path: Path,
) -> None:
    rows = [
        ("row-a", _jpeg_with_exif("fr-biden.jpg")),
        ("row-b", (SAMPLES / "face-api-sample3.jpg").read_bytes()),
    ]
    table = pa.table(
        {
            "id": [k for k, _ in rows],
            "image": [{"bytes": b, "path": f"/private/{NAME}/{k}.jpg"} for k, b in rows],
            "caption": [f"{NAME} at home", "three people"],
        }
    )
    src = tmp_path / "data" / "faces.parquet"
    src.parent.mkdir()
    pq.write_table(table, src)
    out = tmp_path / "out"
    summary = _anonymize(str(src), "-o", str(out), "--ledger", str(tmp_path / "l.db"))
    assert summary["images"] == 2 and summary["failed"] == 0
    files = _local_files(out)
    assert sorted(files) == [
        "report.html",
        "report.json",
        "row-a.png",
        "row-a.receipt.json",
        "row-b.png",
        "row-b.receipt.json",
    ]
    _nothing_identifying(files, "/private/", "at home", str(src.parent))
    bad = CliRunner().invoke(
        app, ["anonymize", str(src), "-o", str(tmp_path / "o2"), "--image-column", "caption"]
    )
    assert bad.exit_code == 2 and "no image files found" in bad.output  # nothing charged
