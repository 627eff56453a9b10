"""``dpface.batch``: safe output planning, subject maps, and batch runs on real sample photos.

Planning tests use small files made here (planning never decodes them); run tests use the
bundled sample photos with ``dp-pix`` (no generator: fast) and a ledger in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from dpface import batch
from dpface.config import AnonymizeConfig
from dpface.errors import UsageError
from dpface.ledger import Ledger
from dpface.models.store import assets_dir

SAMPLES = assets_dir() / "samples"
SMALL = ("skimage-astronaut.png", "fr-obama2.jpg")  # one face each, quick to detect


def _touch(path: Path, data: bytes = b"not decoded by plan()") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _config(tmp_path: Path, **kw: object) -> AnonymizeConfig:
    return AnonymizeConfig(mechanism="dp-pix", epsilon=2.0, ledger=tmp_path / "ledger.db", **kw)  # type: ignore[arg-type]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in SMALL:
        shutil.copy(SAMPLES / name, folder / name)
    return folder


# ---------------------------------------------------------------------- planning
@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_output_folder_overlapping_an_input_folder_is_refused(tmp_path: Path, where: str) -> None:
    src = tmp_path / "in"
    _touch(src / "a.png")
    _touch(src / "a.jpg")
    before = _snapshot(tmp_path)
    out = {"same": src, "inside": src / "anon", "containing": tmp_path}[where]
    with pytest.raises(UsageError, match="output folder"):
        batch.plan([src], out)
    assert _snapshot(tmp_path) == before
    assert not (src / "anon").exists()


def test_output_folder_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _touch(src / "a.png")
    (tmp_path / "alias").symlink_to(src, target_is_directory=True)
    with pytest.raises(UsageError, match="is the input folder"):
        batch.plan([src], tmp_path / "alias")
    with pytest.raises(UsageError, match="inside the input folder"):
        batch.plan([src], tmp_path / "alias" / "out")


def test_an_input_file_that_is_a_planned_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    photo = _touch(out / "a.png")
    with pytest.raises(UsageError, match="would be written"):
        batch.plan([photo], out)
    assert photo.read_bytes() == b"not decoded by plan()"


def test_same_stem_keeps_suffixes_also_ignoring_case(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for name in ("x.jpg", "x.png", "Y.JPG", "y.png", "z.jpeg", "sub/x.png"):
        _touch(src / name)
    planned = batch.plan([src], tmp_path / "out")
    got = {p.rel: p.output for p in planned.images}
    assert got == {
        "x.jpg": "x.jpg.png",
        "x.png": "x.png.png",
        "Y.JPG": "Y.JPG.png",
        "y.png": "y.png.png",
        "z.jpeg": "z.png",
        "sub/x.png": "sub/x.png",
    }
    receipts = [p.receipt for p in planned.images]
    assert len({r.casefold() for r in receipts if r}) == len(receipts)


def test_a_tree_is_mirrored_so_equal_names_in_subfolders_do_not_collide(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _touch(src / "a" / "x.png")
    _touch(src / "b" / "x.png")
    planned = batch.plan([src], tmp_path / "out")
    assert sorted(p.output for p in planned.images) == ["a/x.png", "b/x.png"]


def test_several_inputs_go_under_their_basenames_deduplicated(tmp_path: Path) -> None:
    one, two = tmp_path / "one" / "photos", tmp_path / "two" / "photos"
    _touch(one / "x.png")
    _touch(two / "x.png")
    f1, f2 = _touch(tmp_path / "a" / "x.png"), _touch(tmp_path / "b" / "x.png")
    planned = batch.plan([one, two, f1, f2], tmp_path / "out")
    assert [p.output for p in planned.images] == [
        "photos/x.png",
        "photos-2/x.png",
        "x.png",
        "x-2.png",
    ]
    again = batch.plan([one, two, f1, f2], tmp_path / "out")
    assert [p.output for p in again.images] == [p.output for p in planned.images]


def test_unsupported_missing_and_repeated_inputs_are_listed_not_skipped(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _touch(src / "a.png")
    _touch(src / "notes.txt")
    _touch(src / ".DS_Store")
    planned = batch.plan([src, src, tmp_path / "missing"], tmp_path / "out")
    assert [p.rel for p in planned.images] == ["in/a.png"]
    reasons = {Path(p.input).name: p.reason for p in planned.problems}
    assert "unsupported file type '.txt'" in reasons["notes.txt"]
    assert ".DS_Store" in reasons
    assert "no such file" in reasons["missing"]
    assert "more than once" in reasons["in"]


def test_no_images_is_a_usage_error_listing_why(tmp_path: Path) -> None:
    _touch(tmp_path / "in" / "notes.txt")
    with pytest.raises(UsageError, match=r"no image files found(.|\n)*notes\.txt"):
        batch.plan([tmp_path / "in"], tmp_path / "out")


def test_hashed_names_are_keyed_digests(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _touch(src / "patient-jane-doe.jpg")
    planned = batch.plan([src], tmp_path / "out", names="hash")
    assert not planned.resolved
    with Ledger(tmp_path / "l.db") as led:
        named = planned.with_digest(led.unit_digest)
        (item,) = named.images
        assert item.output == f"{led.unit_digest(b'patient-jane-doe.jpg')[:16]}.png"
        assert item.name is not None and "jane" not in item.name
    with Ledger(tmp_path / "other.db") as other:  # another ledger's key: other names
        assert planned.with_digest(other.unit_digest).images[0].output != item.output


# ---------------------------------------------------------------------- subject maps
def _map(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "map.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("file,subject\na.png,\n", "line 2: empty subject"),
        ("file,subject\na.png,ann\na.png,bob\n", "line 3"),
        ("file,face,subject\na.png,0,ann\na.png,0,bob\n", "line 3"),
        ("file,face,subject\na.png,1,ann\na.png,,bob\n", "line 3"),
        ("file,face,subject\na.png,,bob\na.png,1,ann\n", "line 3"),
        ("file,subject,age\na.png,ann,40\n", "line 1: unknown column"),
        ("file,face,subject\na.png,-1,ann\n", "line 2: face must be"),
        ("file,face,subject\na.png,left,ann\n", "line 2: face must be"),
        ("name,subject\na.png,ann\n", "line 1"),
        ("", "empty subject map"),
    ],
)
def test_subject_map_errors_name_the_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        batch.read_subject_map(_map(tmp_path, text))


def test_subject_map_assigns_by_relative_or_given_path(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for name in ("a.png", "sub/b.png", "c.png"):
        _touch(src / name)
    smap = batch.read_subject_map(
        _map(
            tmp_path,
            "\ufefffile,face,subject\n"  # a BOM, as spreadsheets write it
            f"a.png,,Ann\n{src / 'sub' / 'b.png'},1,Bob\nsub/b.png,0, Cy \nghost.png,,Dee\n",
        )
    )
    planned = batch.plan([src], tmp_path / "out")
    assigned, problems = smap.assign(planned)
    by_rel = {planned.images[i].rel: kw for i, kw in assigned.items()}
    assert by_rel == {"a.png": {"subject": "Ann"}, "sub/b.png": {"subjects": ["Cy", "Bob"]}}
    assert len(problems) == 1 and "ghost.png" in problems[0].reason
    assert "line 5" in problems[0].input


# ---------------------------------------------------------------------- runs
def _receipts(out: Path) -> list[Path]:
    return sorted(out.rglob("*.receipt.json"))


def test_receipts_carry_no_absolute_path(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = _config(tmp_path).run([photos], out)
    assert summary.images == 2 and summary.pixelized == 2
    for r in _receipts(out):
        text = r.read_text()
        assert str(photos) not in text and str(tmp_path) not in text
        receipt = json.loads(text)
        assert receipt["output"] == str(r.relative_to(out)).replace(".receipt.json", ".png")
        assert not Path(receipt["source"]).is_absolute()
    assert summary.ledger == str(tmp_path / "ledger.db")


def test_hashed_names_leak_no_file_name(tmp_path: Path) -> None:
    src = tmp_path / "clinic"
    src.mkdir()
    shutil.copy(SAMPLES / SMALL[0], src / "patient-jane-doe.png")
    shutil.copy(SAMPLES / SMALL[1], src / "patient-john-roe.jpg")
    out = tmp_path / "out"
    summary = _config(tmp_path, names="hash").run(
        [src], out, subject_map=_map(tmp_path, "file,subject\npatient-jane-doe.png,Jane Doe\n")
    )
    assert summary.images == 2
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".png"]) == 2
    for p in files:
        assert "patient" not in p.name and "jane" not in p.name.casefold()
        if p.name.endswith(".receipt.json"):
            text = p.read_text().casefold()
            assert "patient" not in text and "jane" not in text and "john" not in text
            assert "clinic" not in text


def test_a_failed_output_location_is_one_problem_and_the_batch_goes_on(
    photos: Path, tmp_path: Path
) -> None:
    (photos / "blocked").mkdir()
    shutil.copy(SAMPLES / SMALL[0], photos / "blocked" / "in-a-blocked-folder.png")
    out = tmp_path / "out"
    out.mkdir()
    _touch(out / "blocked")  # a file where the output subfolder must go (fails even as root)
    summary = _config(tmp_path).run([photos], out)
    assert summary.images == 2 and summary.failed == 1
    (problem,) = [p for p in summary.problems if "blocked" in p.input]
    assert "cannot be written" in problem.reason and "nothing was read or charged" in problem.reason
    assert {p.name for p in out.glob("*.png")} == {"skimage-astronaut.png", "fr-obama2.png"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_subfolder_is_one_problem(photos: Path, tmp_path: Path) -> None:
    (photos / "ro").mkdir()
    shutil.copy(SAMPLES / SMALL[0], photos / "ro" / "x.png")
    out = tmp_path / "out"
    (out / "ro").mkdir(parents=True)
    (out / "ro").chmod(0o555)
    try:
        summary = _config(tmp_path).run([photos], out)
    finally:
        (out / "ro").chmod(0o755)
    assert summary.images == 2 and summary.failed == 1
    assert any("ro" in p.input and "cannot be written" in p.reason for p in summary.problems)


def test_a_write_failing_after_the_charge_says_the_budget_was_charged(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch.write_atomic

    def flaky(path: Path, data: bytes) -> None:
        if path.name == "fr-obama2.png":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(batch, "write_atomic", flaky)
    out = tmp_path / "out"
    summary = _config(tmp_path).run([photos], out)
    assert summary.images == 1 and summary.failed == 1
    (problem,) = [p for p in summary.problems if "fr-obama2" in p.input]
    assert "budget WAS charged" in problem.reason and "nothing was written" in problem.reason
    assert not (out / "fr-obama2.png").exists()
    receipt = json.loads((out / "fr-obama2.receipt.json").read_text())
    assert receipt["output"] is None and receipt["faces"][0]["ledger_event"] is not None


def _huge_png(path: Path, side: int = 13000) -> Path:
    """A valid 1-bit PNG whose header says side×side: ~20 KB on disk, 0.5 GB once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    idat = zlib.compress(row * side, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return path


def test_a_huge_image_is_refused_from_its_header(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = _huge_png(photos / "huge.png")
    assert huge.stat().st_size < 200_000
    from dpface.pipeline import Anonymizer

    seen: list[str] = []
    real = Anonymizer.anonymize

    def spy(self: Anonymizer, image: object, **kw: object) -> object:
        seen.append(Path(str(image)).name)
        return real(self, image, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Anonymizer, "anonymize", spy)
    summary = _config(tmp_path).run([photos], tmp_path / "out")
    assert "huge.png" not in seen and len(seen) == 2
    (problem,) = [p for p in summary.problems if p.input.endswith("huge.png")]
    assert "13000×13000" in problem.reason and "megapixels" in problem.reason
    assert summary.images == 2 and summary.failed == 1


def test_a_photo_without_a_face_is_written_unchanged_or_withheld(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(src / "wall.png")
    summary = _config(tmp_path).run([src], tmp_path / "out")
    assert summary.images == 1 and summary.no_face == 1
    assert "written unchanged (no face found)" in summary.problems[0].reason
    assert (tmp_path / "out" / "wall.png").is_file()
    strict = _config(tmp_path, strict=True).run([src], tmp_path / "strict")
    assert strict.images == 0 and strict.withheld == 1
    assert "withheld" in strict.problems[0].reason
    assert not (tmp_path / "strict" / "wall.png").exists()


@pytest.mark.parametrize("suffix", [".tif", ".webp"])
def test_a_multi_frame_image_says_only_its_first_frame_was_written(
    tmp_path: Path, suffix: str
) -> None:
    """A multi-page TIFF or an animated WebP: the first frame is anonymised and written, and
    the summary says the other frames were not written (never dropped silently)."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    face = Image.open(SAMPLES / "fr-obama.jpg").convert("RGB")
    other = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    face.save(src / f"clip{suffix}", save_all=True, append_images=[other, face])
    summary = _config(tmp_path).run([src], tmp_path / "out")
    assert summary.images == 1 and summary.counts.get("pixelized", 0) >= 1
    notes = [p.reason for p in summary.problems]
    assert any("only the first of its 3 frames/pages" in n for n in notes), notes
    receipt = json.loads((tmp_path / "out" / "clip.receipt.json").read_text())
    assert "first of the input's 3 frames/pages" in receipt["input_note"]  # beside the output
    # and the library says it too, to a caller that never goes through the batch
    anon = _config(tmp_path).build_anonymizer()
    try:
        direct = anon.anonymize(src / f"clip{suffix}")
        array = anon.anonymize(np.asarray(face))
    finally:
        anon.ledger.close()
    assert "the other 2 are not in this result" in direct.receipt["input_note"]
    assert "input_note" not in array.receipt
    with Image.open(tmp_path / "out" / "clip.png") as out:
        assert getattr(out, "n_frames", 1) == 1
        first = np.asarray(out.convert("RGB"))
    assert not np.array_equal(first, np.asarray(face))  # its face was protected


def test_a_subject_map_charges_one_budget_for_two_photos_of_one_person(
    photos: Path, tmp_path: Path
) -> None:
    smap = _map(tmp_path, "file,subject\nskimage-astronaut.png,Eileen\nfr-obama2.jpg,Eileen\n")
    summary = _config(tmp_path, budget=3.0).run([photos], tmp_path / "out", subject_map=smap)
    # budget 3 holds one release at epsilon 2: the second photo of the same person is refused
    assert summary.faces == 2 and summary.pixelized == 1 and summary.refused == 1
    with Ledger(tmp_path / "ledger.db", create=False) as led:
        assert len(led.events("Eileen")) == 1 and led.budget("Eileen").epsilon == 3.0


def test_budget_for_an_existing_subject_is_reported_as_ignored(
    photos: Path, tmp_path: Path
) -> None:
    _config(tmp_path).run(
        [photos],
        tmp_path / "o1",
        subject=None,
        subject_map=_map(tmp_path, "file,subject\nfr-obama2.jpg,Barack\n"),
    )
    again = _config(tmp_path, budget=100.0).run(
        [photos / "fr-obama2.jpg"], tmp_path / "o2", subject="Barack"
    )
    notes = [p.reason for p in again.problems if p.input == "--budget"]
    assert notes
    assert "--budget 100 ignored for existing subject Barack (budget epsilon=10)" in notes[0]
    assert "dpface ledger set-budget" in notes[0]


def test_the_report_in_the_output_folder_covers_this_run_only(photos: Path, tmp_path: Path) -> None:
    first = _config(tmp_path).run([photos / SMALL[0]], tmp_path / "o1", subject="first-person")
    second = _config(tmp_path).run([photos / SMALL[1]], tmp_path / "o2", subject="second-person")
    assert first.run_id != second.run_id
    for out, mine, other in (
        (tmp_path / "o1", "first-person", "second-person"),
        (tmp_path / "o2", "second-person", "first-person"),
    ):
        html = (out / "report.html").read_text()
        data = (out / "report.json").read_text()
        assert mine in html and mine in data
        assert other not in html and other not in data


def test_the_sixth_demo_run_into_one_ledger_masks_every_face(tmp_path: Path) -> None:
    """What ``./dev run`` six times does (the demo's library path, two sample photos): each
    unnamed face is its photo's unit, so every run charges the same units until refused."""
    src = tmp_path / "samples"
    src.mkdir()
    for name in SMALL:
        shutil.copy(SAMPLES / name, src / name)
    config = AnonymizeConfig(mechanism="dp-pix", ledger=tmp_path / "ledger.db")
    runs = [config.run([src], tmp_path / "out") for _ in range(6)]
    assert [r.pixelized for r in runs[:5]] == [2] * 5 and runs[4].masked == 0
    assert runs[5].faces == runs[5].masked == runs[5].refused == 2
    with Ledger(tmp_path / "ledger.db", create=False) as led:
        assert len(led.subjects()) == 2


def test_the_summary_counts_unsure_detections_and_dp_fallbacks(tmp_path: Path) -> None:
    """fr-biden: Biden, and a 26 px box in a dark corner the detector is unsure of. The
    default (identity) path replaces Biden and protects the unsure box with the charged DP
    fallback; the summary says so."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLES / "fr-biden.jpg", src / "fr-biden.jpg")
    config = AnonymizeConfig(ledger=tmp_path / "ledger.db", workers=1)
    summary = config.run([src], tmp_path / "out")
    assert summary.replaced == 1 and summary.uncertain >= 1 and summary.fallback >= 1
    assert summary.faces == summary.replaced + summary.pixelized + summary.masked
    data = summary.as_dict()
    assert data["uncertain"] == summary.uncertain and data["fallback"] == summary.fallback
