"""The pipeline's privacy as users run it, on real photos and models.

Each test here kills a mutant of ``dpface/pipeline.py`` that the rest of the suite let through:
the generator fed the raw embedding, a refused or unreplaceable face left unmasked, unnamed
faces that never run out of budget, pseudonyms that launder seeded or non-DP releases, linking
that names people in receipts, seeded runs labelled private, an empty ``not_protected``.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import dpface
from dpface.detect import detect_array
from dpface.errors import UsageError
from dpface.generators import surrogate
from dpface.generators.surrogate import SurrogateGenerator
from dpface.ledger import Ledger
from dpface.linking import TemplateStore
from dpface.models import store
from dpface.models.images import load_rgb
from dpface.pipeline import LINKED_UNIT, MASK_VALUE, Anonymizer
from mechanisms.budgets import PureDP
from mechanisms.identity import IdentityLaplace
from mechanisms.pixelization import DPPixelization

from .recording import RecordingGenerator


class RecordingLaplace(IdentityLaplace):
    """The real IdentityLaplace, keeping a copy of every vector it releases."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.released: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(super().__call__(x))
        self.released.append(y.copy())
        return y


@pytest.fixture(scope="module")
def surrogate_gen() -> SurrogateGenerator:
    return SurrogateGenerator()


@pytest.fixture()
def spy(surrogate_gen: SurrogateGenerator) -> RecordingGenerator:
    return RecordingGenerator(surrogate_gen)


OBAMA = "samples/fr-obama.jpg"
GROUP = "samples/face-api-sample1.jpg"


def _identity(
    spy: RecordingGenerator, ledger: Ledger, **kw: Any
) -> tuple[Anonymizer, RecordingLaplace]:
    mech_kw = {k: kw.pop(k) for k in ("seed",) if k in kw}
    mech = RecordingLaplace(epsilon=6.0, dim=spy.identity_dim, **mech_kw)
    return Anonymizer(mechanism=mech, generator=spy, ledger=ledger, **kw), mech


def _pix(ledger: Ledger, **kw: Any) -> Anonymizer:
    return Anonymizer(mechanism=DPPixelization(epsilon=1.0, block=16, m=16), ledger=ledger, **kw)


def _outside_unchanged(before: np.ndarray, after: np.ndarray, box: tuple[int, ...]) -> bool:
    x0, y0, x1, y1 = box
    keep = np.ones(before.shape[:2], dtype=bool)
    keep[y0:y1, x0:x1] = False
    return bool(np.array_equal(before[keep], after[keep]))


# ---------------------------------------------------------------- what the generator sees
def test_the_generator_receives_exactly_the_privatised_identity(
    tmp_path: Path, spy: RecordingGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon, mech = _identity(spy, led)
    res = anon.anonymize(store.path(OBAMA), subject="obama")
    assert res.faces[0].status == "replaced"
    assert len(mech.released) == 1 and len(spy.seen) == 1
    assert np.array_equal(spy.seen[0], mech.released[0])
    raw = anon._encoder_for().embed(detect_array(load_rgb(store.path(OBAMA))).faces)[0]
    raw = raw / np.linalg.norm(raw)
    private = spy.seen[0] / np.linalg.norm(spy.seen[0])
    assert abs(float(raw @ private)) < 0.9  # the raw embedding never reaches the generator


def test_a_reused_pseudonym_is_the_first_release_and_is_charged_once(
    tmp_path: Path, spy: RecordingGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon, mech = _identity(spy, led, pseudonym="reuse")
    anon.anonymize(store.path(OBAMA), subject="obama")
    second = anon.anonymize(store.path("samples/fr-obama2.jpg"), subject="obama")
    assert len(mech.released) == 1 and len(spy.seen) == 2
    assert np.array_equal(spy.seen[1], mech.released[0])
    assert second.faces[0].identity == "reused pseudonym"
    assert len(led.events("obama")) == 1


# ---------------------------------------------------------------- refused and unreplaceable
def test_a_refused_face_is_masked_pixel_for_pixel_and_the_refusal_recorded(
    tmp_path: Path, spy: RecordingGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(6.0))
    anon, mech = _identity(spy, led)
    photo = store.path(OBAMA)
    assert anon.anonymize(photo, subject="obama").faces[0].status == "replaced"
    res = anon.anonymize(photo, subject="obama")
    face = res.faces[0]
    assert face.status == "masked" and face.refused and "budget refused" in (face.reason or "")
    x0, y0, x1, y1 = face.box
    assert res.image is not None and np.all(res.image[y0:y1, x0:x1] == MASK_VALUE)
    assert _outside_unchanged(load_rgb(photo), res.image, face.box)
    assert len(mech.released) == 1 and len(spy.seen) == 1  # no noise drawn, nothing generated
    assert len(led.events("obama", kinds=("refusal",))) == 1


def _cells_are_flat(img: np.ndarray, region: tuple[int, ...], block: int) -> bool:
    """Every full block x block cell of the region is one colour (no face detail left)."""
    x0, y0, x1, y1 = region
    for y in range(y0, y1 - block + 1, block):
        for x in range(x0, x1 - block + 1, block):
            cell = img[y : y + block, x : x + block].reshape(-1, 3)
            if not np.all(cell == cell[0]):
                return False
    return True


def test_a_face_the_generator_cannot_replace_gets_the_dp_fallback(
    tmp_path: Path, spy: RecordingGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real generator's own refusal path: every face is "too small" for it
    monkeypatch.setattr(surrogate, "MIN_FACE_WIDTH", 1e9)
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon, _ = _identity(spy, led)
    photo = store.path(OBAMA)
    res = anon.anonymize(photo, subject="obama")
    face = res.faces[0]
    assert face.status == "pixelized" and face.protection == "dp-fallback"
    assert "generator could not replace it" in (face.reason or "")
    assert res.image is not None and _outside_unchanged(load_rgb(photo), res.image, face.box)
    x0, y0, x1, y1 = face.box
    block = max(4, -(-max(x1 - x0, y1 - y0) // anon.fallback_cells))
    assert _cells_are_flat(res.image, face.box, block)
    # both releases were charged: the identity draw (safe direction) and the fallback
    assert [e["mechanism"] for e in led.events("obama")] == ["RecordingLaplace", "DPPixelization"]
    assert res.receipt["faces"][0]["channels"]["notes"][0].startswith("DP fallback")


def test_with_the_mask_fallback_an_unreplaceable_face_is_masked_pixel_for_pixel(
    tmp_path: Path, spy: RecordingGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surrogate, "MIN_FACE_WIDTH", 1e9)
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon, _ = _identity(spy, led, fallback="mask")
    photo = store.path(OBAMA)
    res = anon.anonymize(photo, subject="obama")
    face = res.faces[0]
    assert face.status == "masked" and face.protection == "mask" and not face.refused
    x0, y0, x1, y1 = face.box
    assert res.image is not None and np.all(res.image[y0:y1, x0:x1] == MASK_VALUE)
    assert _outside_unchanged(load_rgb(photo), res.image, face.box)


def test_a_refused_fallback_is_masked(
    tmp_path: Path, spy: RecordingGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surrogate, "MIN_FACE_WIDTH", 1e9)
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(6.0))  # the identity draw uses it all
    anon, _ = _identity(spy, led)
    res = anon.anonymize(store.path(OBAMA), subject="obama")
    face = res.faces[0]
    assert face.status == "masked" and face.refused
    assert "fallback was refused" in (face.reason or "")
    x0, y0, x1, y1 = face.box
    assert res.image is not None and np.all(res.image[y0:y1, x0:x1] == MASK_VALUE)


# ---------------------------------------------------------------- units that bind
def test_the_same_unnamed_photo_runs_out_of_budget_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    photo = store.path(GROUP)
    statuses, units = [], []
    for _ in range(3):  # three separate runs (new Anonymizer, new ledger connection)
        with Ledger(path, default_budget=PureDP(2.0)) as led:
            res = _pix(led).anonymize(photo)
        statuses.append([f.status for f in res.faces])
        units.append([f.subject for f in res.faces])
    assert statuses == [["pixelized"] * 3, ["pixelized"] * 3, ["masked"] * 3]
    assert units[0] == units[1] == units[2] and len(set(units[0])) == 3
    assert all(u.startswith("face:") for u in units[0])
    with Ledger(path) as led:
        assert len(led.subjects()) == 3


def test_unnamed_units_follow_the_pixels_not_the_file(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(10.0))
    anon = _pix(led)
    jpg = store.path("samples/fr-biden.jpg")
    png = tmp_path / "copy.png"
    Image.fromarray(load_rgb(jpg)).save(png)  # same pixels, another file and format
    a = anon.anonymize(jpg).faces[0].subject
    b = anon.anonymize(png).faces[0].subject
    c = anon.anonymize(load_rgb(jpg)).faces[0].subject
    other = anon.anonymize(store.path(OBAMA)).faces[0].subject
    assert a == b == c and other != a
    assert led.spent(a).epsilon == pytest.approx(3.0)


def test_subject_names_are_normalised(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(10.0))
    anon = _pix(led)
    photo = store.path("samples/fr-obama2.jpg")
    anon.anonymize(photo, subject=unicodedata.normalize("NFC", "José"))
    anon.anonymize(photo, subject=unicodedata.normalize("NFD", "José") + " ")
    assert led.subjects() == [unicodedata.normalize("NFC", "José")]
    assert led.spent("José").epsilon == pytest.approx(2.0)
    with pytest.raises(UsageError):
        anon.anonymize(photo, subject="")
    with pytest.raises(UsageError):
        anon.anonymize(photo, subject="   ")


# ---------------------------------------------------------------- seeded and non-DP
def test_a_seeded_run_is_labelled_everywhere_and_never_reused(
    tmp_path: Path, spy: RecordingGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    seeded, smech = _identity(spy, led, pseudonym="reuse", seed=7)
    res = seeded.anonymize(store.path(OBAMA), subject="obama")
    r = res.receipt
    assert r["seeded"] is True and r["mechanism"]["seeded"] is True
    assert "SEEDED" in r["mechanism"]["guarantee"] and "SEEDED" in r["mechanism"]["randomness"]
    assert any("seed" in item for item in r["not_protected"])
    assert [e["seeded"] for e in led.events("obama")] == [True]
    assert seeded.settings()["seeded"] is True
    # an unseeded run must not re-publish the seeded identity: it draws (and pays) afresh
    private, pmech = _identity(spy, led, pseudonym="reuse")
    again = private.anonymize(store.path(OBAMA), subject="obama")
    assert again.faces[0].identity == "fresh draw" and len(pmech.released) == 1
    assert not np.array_equal(spy.seen[-1], smech.released[0])
    assert again.receipt["seeded"] is False
    assert "SEEDED" not in again.receipt["mechanism"]["guarantee"]
    assert [e["seeded"] for e in led.events("obama")] == [True, False]


def test_a_non_dp_release_is_never_reused_by_a_dp_run(
    tmp_path: Path, spy: RecordingGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    paper = IdentityLaplace.paper_compatible(
        epsilon=6.0, dim=spy.identity_dim, measured_sensitivity=1.0
    )
    Anonymizer(mechanism=paper, generator=spy, ledger=led, pseudonym="reuse").anonymize(
        store.path(OBAMA), subject="obama"
    )
    nondp = spy.seen[-1].copy()
    dp, mech = _identity(spy, led, pseudonym="reuse")
    res = dp.anonymize(store.path(OBAMA), subject="obama")
    assert res.faces[0].identity == "fresh draw" and len(mech.released) == 1
    assert not np.array_equal(spy.seen[-1], nondp)
    assert res.receipt["mechanism"]["is_dp"] is True


def test_pseudonym_keys_differ_for_every_parameter_of_the_guarantee(
    spy: RecordingGenerator,
) -> None:
    led = Ledger(":memory:", default_budget=PureDP(30.0))

    def key(mech: IdentityLaplace) -> str:
        return Anonymizer(mechanism=mech, generator=spy, ledger=led).pseudonym_key()

    d = spy.identity_dim
    keys = {
        key(IdentityLaplace(epsilon=6.0, dim=d)),
        key(IdentityLaplace(epsilon=2.0, dim=d)),
        key(IdentityLaplace(epsilon=6.0, dim=d, domain="clip", clip=0.5)),
        key(IdentityLaplace.paper_compatible(epsilon=6.0, dim=d, measured_sensitivity=1.0)),
    }
    assert len(keys) == 4
    assert key(IdentityLaplace(epsilon=6.0, dim=d)) == key(IdentityLaplace(epsilon=6.0, dim=d))


# ---------------------------------------------------------------- linking is honest
def test_linking_is_opt_in_and_never_names_the_person_in_the_receipt(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(10.0))
    templates = TemplateStore(tmp_path / "templates.db")
    anon = _pix(led, templates=templates)
    anon.anonymize(store.path(OBAMA), subject="obama")  # enrols
    same = anon.anonymize(store.path("samples/fr-obama2.jpg"), name="IMG_0002.jpg")
    face = same.faces[0]
    assert face.linked and face.subject == "obama" and face.unit == LINKED_UNIT
    assert len(led.events("obama")) == 2
    text = json.dumps(same.receipt)
    assert "obama" not in text.lower() and "cosine" not in text.lower()
    rface = same.receipt["faces"][0]
    assert "subject" not in rface and rface["spent"] is None and rface["ledger_event"] is None
    assert any("biometric matching" in u for u in rface["channels"]["uncovered"])
    assert any("biometric matching" in u for u in same.receipt["not_protected"])
    # the ledger holds no templates: they live in the template file only
    tables = {r[0] for r in led._conn.execute("SELECT name FROM sqlite_master")}
    assert "refs" not in tables
    other = anon.anonymize(store.path("samples/fr-biden.jpg"))
    assert not other.faces[0].linked and other.faces[0].subject.startswith("face:")


def test_without_templates_an_unnamed_face_is_its_own_unit(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(10.0))
    anon = _pix(led)
    anon.anonymize(store.path(OBAMA), subject="obama")
    same = anon.anonymize(store.path("samples/fr-obama2.jpg"))
    assert same.faces[0].subject.startswith("face:") and not same.faces[0].linked
    assert len(led.events("obama")) == 1
    assert "template" not in same.receipt["privacy_units"]


# ---------------------------------------------------------------- receipts
def test_receipts_say_what_is_not_protected_and_carry_no_paths(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(10.0))
    photo = store.path(GROUP)
    res = _pix(led).anonymize(photo)
    r = res.receipt
    text = json.dumps(r)
    assert r["source"] == photo.name and str(photo.parent) not in text
    assert str(tmp_path) not in text  # not even the ledger's location
    items = " | ".join(r["not_protected"])
    assert "detector missed" in items and "outside" in items and "unnamed person" in items
    assert r["seeded"] is False and "SEEDED" not in text
    assert all(f["channels"]["uncovered"] for f in r["faces"])
    named = _pix(led, receipt_subjects="digest").anonymize(store.path(OBAMA), subject="obama")
    assert "obama" not in json.dumps(named.receipt["faces"])
    assert named.receipt["faces"][0]["unit"].startswith("subject:")
    assert named.faces[0].subject == "obama"  # the caller still knows who it was


def test_settings_record_the_run_provenance(spy: RecordingGenerator) -> None:
    anon, _ = _identity(spy, Ledger(":memory:", default_budget=PureDP(30.0)))
    s = anon.settings()
    assert s["mechanism"] == "RecordingLaplace" and s["encoder"] == spy.encoder
    assert s["generator"] == "surrogate" and s["seeded"] is False and s["is_dp"] is True
    assert s["channels"]["covered"] and s["channels"]["uncovered"]
    assert s["model_hashes"] and all(len(h) == 64 for h in s["model_hashes"].values())
    assert s["dpface_version"] == dpface.__version__
