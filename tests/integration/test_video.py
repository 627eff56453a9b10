"""Video (issue 18): real clips encoded with FFmpeg through PyAV from the sample photos.

Checked: every frame with a visible face has it protected, a track costs one ledger release,
re-running a clip charges the same units, a detector miss is protected by prediction, a
re-entering person is linked to one release, a refused budget masks a track on every frame,
head protection (one head release per person, fresh DP-Pix every frame, or grey), audio
kept/dropped, metadata stripped, timestamps (also VFR), rotation, containers, a corrupt
file reported. Runs where the real detector is not the point use a detector that returns the
clip's true boxes (fast); the others run the default detector and generator.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("motpy")

from dpface import Anonymizer, Ledger, SurrogateGenerator  # noqa: E402
from dpface.detect import ImageFaces, shape_from_box  # noqa: E402
from dpface.face import Face  # noqa: E402
from dpface.pipeline import MASK_VALUE  # noqa: E402
from dpface.tracking import one_euro, smooth_track  # noqa: E402
from dpface.video import anonymize_video, find_tracks, is_video, mean_identity, probe  # noqa: E402
from mechanisms import ApproxDP, DPBlur, DPPixelization, IdentityLaplace, PureDP  # noqa: E402
from scripts.bench_video import Clip, make_clip, sprite, two_people  # noqa: E402

METADATA = {
    "location": "+48.8584+002.2945/",
    "make": "ACME",
    "model": "Cam 1",
    "creation_time": "2024-01-01T00:00:00Z",
    "title": "my private clip",
}


def _pix(budget: float = 1000.0) -> Anonymizer:
    """DP-Pix (pure epsilon: exact budget arithmetic) with an in-memory ledger."""
    return Anonymizer(
        mechanism=DPPixelization(epsilon=6.0, block=8, m=16),
        ledger=Ledger(":memory:", default_budget=PureDP(budget)),
    )


def _truth(clip: Clip, drop: frozenset[tuple[int, int]] = frozenset(), every: int = 1):  # type: ignore[no-untyped-def]
    """A detector returning the clip's true boxes, called on frames 0, every, 2 every...;
    ``drop``: (frame, person) pairs it misses."""
    calls = {"n": 0}

    def detect(rgb: np.ndarray) -> ImageFaces:
        i = calls["n"] * every
        calls["n"] += 1
        faces = []
        for k, (box, vis) in enumerate(zip(clip.boxes[i], clip.visible[i], strict=True)):
            if not vis or (i, k) in drop or box[2] - box[0] < 8:
                continue
            b = tuple(float(v) for v in box)
            faces.append(
                Face(rgb, b, shape_from_box(b, "centerface"), score=0.9, detector="centerface")
            )
        return ImageFaces("<frame>", faces, size=rgb.shape[:2], min_face_px=20)

    return detect


def _frames(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as c:
        imgs, times = [], []
        for f in c.decode(video=0):
            rgb = f.to_ndarray(format="rgb24")
            k = round((f.rotation or 0) / 90) % 4
            imgs.append(np.rot90(rgb, k) if k else rgb)
            times.append(float(f.pts * f.time_base))
        return imgs, times


def _unprotected(clip: Clip, result, out: Path, mad: float = 4.0) -> list[int]:  # type: ignore[no-untyped-def]
    """Frames where a visible true face is not covered by a protected region (>= 60 % of its
    box) or its pixels were left (almost) unchanged."""
    src, _ = _frames(clip.path)
    dst, _ = _frames(out)
    assert len(src) == len(dst) == len(result.regions)
    bad = []
    for i in range(len(src)):
        for box, vis in zip(clip.boxes[i], clip.visible[i], strict=True):
            x0, y0, x1, y1 = box
            if not vis or (x1 - x0) * (y1 - y0) < 100:
                continue
            area = (x1 - x0) * (y1 - y0)
            cover = np.zeros((src[i].shape[0], src[i].shape[1]), bool)
            for _, (a0, b0, a1, b1), how in result.regions[i]:
                if how != "none":
                    cover[b0:b1, a0:a1] = True
            covered = cover[y0:y1, x0:x1].sum() / area
            diff = np.abs(src[i][y0:y1, x0:x1].astype(int) - dst[i][y0:y1, x0:x1]).mean()
            if covered < 0.6 or diff < mad:
                bad.append(i)
    return bad


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    d = tmp_path_factory.mktemp("clips")
    n = 10
    people = two_people(n)
    obama = sprite("fr-obama.jpg")

    def leave(i: int) -> tuple[float, float, float] | None:
        # in the picture for frames 0-2 and 8-11, gone for 5 frames (> max_gap) between
        return None if 3 <= i <= 7 else (160 + 4 * i, 110, 70 + 2 * i)

    def still(i: int) -> tuple[float, float, float]:
        return (160 + 3 * i, 120, 80 - 2 * i)

    return {
        "cross": make_clip(
            d / "cross.mp4", frames=n, people=people, audio=True, cover={4: 0}, blur=(7,)
        ),
        "meta": make_clip(
            d / "meta.mp4", frames=4, people=[(obama, still)], audio=True, metadata=METADATA
        ),
        "vfr": make_clip(d / "vfr.mkv", frames=6, people=[(obama, still)], vfr=True, audio=True),
        "rot": make_clip(d / "rot.mov", frames=4, people=[(obama, still)], rotation=-90),
        "webm": make_clip(d / "w.webm", frames=3, people=[(obama, still)], audio=True),
        "avi": make_clip(d / "v.avi", frames=3, people=[(obama, still)], audio=True),
        "reenter": make_clip(d / "reenter.mp4", frames=12, people=[(obama, leave)]),
        "still": make_clip(d / "still.mp4", frames=8, people=[(obama, still)]),
    }


# ----------------------------------------------------------------------------- full pipeline


@pytest.fixture(scope="module")
def identity_run(clips: dict[str, Clip], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two people crossing, one covered for a frame, a frame with motion blur: default
    detector, identity-laplace."""
    gen = SurrogateGenerator()
    ledger = Ledger(":memory:", default_budget=PureDP(100.0))
    anon = Anonymizer(
        mechanism=IdentityLaplace(epsilon=6.0, dim=gen.identity_dim), generator=gen, ledger=ledger
    )
    out = tmp_path_factory.mktemp("out") / "cross.mp4"
    seen: list[tuple[str, int, int]] = []
    res = anon.anonymize_video(
        clips["cross"].path, out, progress=lambda s, d, n: seen.append((s, d, n))
    )
    return anon, res, out, seen


def test_two_people_crossing_every_frame_protected_one_release_per_track(
    clips: dict[str, Clip], identity_run
) -> None:  # type: ignore[no-untyped-def]
    anon, res, out, seen = identity_run
    clip = clips["cross"]
    assert res.ok, res.error
    assert res.frames == clip.frames
    assert _unprotected(clip, res, out) == []
    # the two people are the two long tracks, each replaced by the generator on every frame
    people = sorted(res.tracks, key=lambda t: -t.frames)[:2]
    assert all(t.frames == clip.frames and t.protection == "generator" for t in people)
    assert all(t.identity == "fresh draw" for t in people)
    # one ledger release per track group: not one per frame
    releases = [e for e in anon.ledger.events() if e["kind"] == "release"]
    per_group = {(t.group, t.ledger_event, t.fallback_event) for t in res.tracks}
    charged = sum((e is not None) + (f is not None) for _, e, f in per_group)
    assert len(releases) == charged == res.receipt["releases"] <= 2 * len(per_group)
    assert len(releases) < clip.frames
    for t in people:
        assert [e["subject"] for e in releases].count(t.subject) == 1
    # the covered frame has no detection of that face: protected by interpolation
    assert res.predicted_frames >= 1
    assert res.receipt["detection"]["frames_protected_only_by_prediction"] == res.predicted_frames
    # progress is reported in frames, for both passes
    assert ("analyse", clip.frames, clip.frames) in seen and seen[-1][0] == "render"
    # receipts: per track frames, release, spend -- and no path
    text = str(res.receipt)
    assert str(clip.path.parent) not in text and str(out.parent) not in text
    for t in res.receipt["tracks"]:
        assert {"track", "frames", "ledger_event", "spent", "channels"} <= set(t)
        assert "subject" not in t
    assert any("audio" in item for item in res.receipt["not_protected"])


def test_same_surrogate_on_every_frame_and_low_flicker(
    clips: dict[str, Clip], identity_run
) -> None:  # type: ignore[no-untyped-def]
    _, _, out, _ = identity_run
    clip = clips["cross"]
    dst, _ = _frames(out)
    gen = SurrogateGenerator()
    from dpface.detect import detect_array
    from dpface.models.encoders import get_encoder

    enc = get_encoder(gen.encoder)
    # the output faces of person 2 (Biden, never covered) on consecutive frames: one identity
    embs = []
    for i in (0, 2, 8):
        box = clip.boxes[i][1]
        found = [f for f in detect_array(dst[i]).faces if not f.uncertain]
        f = max(found, key=lambda f: _overlap(f.box, box))
        embs.append(enc.embed([f])[0])
    sims = [float(embs[0] @ e) / (np.linalg.norm(embs[0]) * np.linalg.norm(e)) for e in embs[1:]]
    assert min(sims) >= enc.threshold, sims


def _overlap(a, b) -> float:  # type: ignore[no-untyped-def]
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy


def test_reentering_person_linked_to_one_release(clips: dict[str, Clip], tmp_path: Path) -> None:
    gen = SurrogateGenerator()
    anon = Anonymizer(
        mechanism=IdentityLaplace(epsilon=6.0, dim=gen.identity_dim),
        generator=gen,
        ledger=Ledger(":memory:", default_budget=PureDP(100.0)),
    )
    clip = clips["reenter"]
    # gone for 5 frames: longer than max_gap, so the tracker starts a new track
    res = anon.anonymize_video(clip.path, tmp_path / "o.mp4", detect_every=2, max_gap=2)
    assert res.ok, res.error
    assert _unprotected(clip, res, tmp_path / "o.mp4") == []
    person = [t for t in res.tracks if t.protection == "generator"]
    assert len(person) == 2 and len({t.group for t in person}) == 1
    assert all(t.linked for t in person)
    assert person[0].ledger_event == person[1].ledger_event is not None
    releases = [e for e in anon.ledger.events() if e["kind"] == "release"]
    assert [e["subject"] for e in releases].count(person[0].subject) == 1
    assert any("linked this track" in u for u in person[0].channels["uncovered"])
    # without linking: two releases
    res2 = anon.anonymize_video(
        clip.path, tmp_path / "o2.mp4", detect_every=2, max_gap=2, link_tracks=False
    )
    assert len({t.group for t in res2.tracks if t.protection == "generator"}) == 2


# ----------------------------------------------------------------------------- accounting


def test_rerun_charges_the_same_units(clips: dict[str, Clip], tmp_path: Path) -> None:
    clip = clips["still"]
    anon = _pix()
    a = anon.anonymize_video(clip.path, tmp_path / "a.mp4", detect=_truth(clip))
    b = anon.anonymize_video(clip.path, tmp_path / "b.mp4", detect=_truth(clip))
    assert [t.subject for t in a.tracks] == [t.subject for t in b.tracks]
    assert len(a.tracks) == 1
    s = a.tracks[0].subject
    assert anon.ledger.spent(s).epsilon == pytest.approx(2 * 6.0, rel=1e-3)
    assert [e["subject"] for e in anon.ledger.events() if e["kind"] == "release"] == [s, s]
    assert a.tracks[0].status == "pixelized" and _unprotected(clip, a, tmp_path / "a.mp4") == []


def test_rerun_with_the_default_detector_charges_the_same_units(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    clip = clips["still"]
    anon = _pix()
    a = anon.anonymize_video(clip.path, tmp_path / "a.mp4", detect_every=2)
    b = anon.anonymize_video(clip.path, tmp_path / "b.mp4", detect_every=2)
    assert a.tracks and [t.subject for t in a.tracks] == [t.subject for t in b.tracks]
    for t in a.tracks:  # each unit charged once per run
        assert anon.ledger.spent(t.subject).epsilon == pytest.approx(12.0, rel=1e-3)
    assert _unprotected(clip, a, tmp_path / "a.mp4") == []


def test_dp_blur_track_charged_once(clips: dict[str, Clip], tmp_path: Path) -> None:
    clip = clips["still"]
    anon = Anonymizer(
        mechanism=DPBlur(epsilon=6.0, delta=1e-6, block=8, m=16),
        ledger=Ledger(":memory:", default_budget=ApproxDP(100.0, 1e-5)),
    )
    res = anon.anonymize_video(clip.path, tmp_path / "o.mp4", detect=_truth(clip))
    (track,) = res.tracks
    assert track.status == "pixelized" and track.protection == "mechanism"
    releases = [e for e in anon.ledger.events() if e["kind"] == "release"]
    assert len(releases) == 1 and releases[0]["mechanism"] == "DPBlur"
    assert _unprotected(clip, res, tmp_path / "o.mp4") == []


def test_missed_detections_protected_by_prediction(clips: dict[str, Clip], tmp_path: Path) -> None:
    clip = clips["still"]
    res = _pix().anonymize_video(
        clip.path, tmp_path / "o.mp4", detect=_truth(clip, drop=frozenset({(3, 0), (4, 0)}))
    )
    assert res.ok
    (track,) = res.tracks
    assert track.detected == 6 and track.interpolated == 2 and track.frames == 8
    assert res.predicted_frames == 2
    assert [n for n, _, _ in res.regions[3]] == [1] and [n for n, _, _ in res.regions[4]] == [1]
    assert _unprotected(clip, res, tmp_path / "o.mp4") == []


def test_detect_every_k_tracks_between(clips: dict[str, Clip], tmp_path: Path) -> None:
    clip = clips["still"]
    res = _pix().anonymize_video(
        clip.path, tmp_path / "o.mp4", detect=_truth(clip, every=3), detect_every=3
    )
    assert res.receipt["detection"]["frames_searched"] == 3
    (track,) = res.tracks
    assert track.frames == 8 and track.detected == 3
    assert _unprotected(clip, res, tmp_path / "o.mp4") == []


def test_budget_refusal_masks_the_track_on_every_frame(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    clip = clips["still"]
    res = _pix(budget=1.0).anonymize_video(clip.path, tmp_path / "o.mp4", detect=_truth(clip))
    (track,) = res.tracks
    assert track.refused and track.status == "masked" and track.masked_frames == 8
    assert all(how == "mask" for r in res.regions for _, _, how in r)
    dst, _ = _frames(tmp_path / "o.mp4")
    x0, y0, x1, y1 = clip.boxes[5][0]
    assert np.abs(dst[5][y0 + 4 : y1 - 4, x0 + 4 : x1 - 4].astype(int) - 128).mean() < 4


def test_named_subject_charged_to_the_subject(clips: dict[str, Clip], tmp_path: Path) -> None:
    clip = clips["still"]
    anon = _pix()
    res = anon.anonymize_video(clip.path, tmp_path / "o.mp4", detect=_truth(clip), subject="Ann")
    assert res.tracks[0].subject == "Ann" and res.tracks[0].unit == "Ann" and res.tracks[0].named
    assert anon.ledger.spent("Ann").epsilon == pytest.approx(6.0, rel=1e-3)
    bad = anon.anonymize_video(
        clip.path, tmp_path / "p.mp4", detect=_truth(clip), subjects={3: "Bob"}
    )
    assert not bad.ok and "track 3" in (bad.error or "")


# ----------------------------------------------------------------------------- head protection


def _head_anon(generator: SurrogateGenerator, budget: float, head: str) -> Anonymizer:
    """identity-laplace (epsilon 6) with head protection at epsilon 2, pure-DP ledger."""
    return Anonymizer(
        mechanism=IdentityLaplace(epsilon=6.0, dim=generator.identity_dim),
        generator=generator,
        ledger=Ledger(":memory:", default_budget=PureDP(budget)),
        head=head,  # type: ignore[arg-type]
        head_epsilon=2.0,
    )


def _grey_corners(frame: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """The head box's two top corners (inset past the codec's chroma bleed) are flat grey:
    no face is drawn there."""
    x0, y0, x1, _ = box
    for patch in (
        frame[y0 + 4 : y0 + 16, x0 + 4 : x0 + 16],
        frame[y0 + 4 : y0 + 16, x1 - 16 : x1 - 4],
    ):
        if np.abs(patch.astype(int) - MASK_VALUE).mean() > 6:
            return False
    return True


@pytest.fixture(scope="module")
def head_run(clips: dict[str, Clip], generator: SurrogateGenerator, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two people crossing (10 frames), head="dp-pix": the true boxes as detections."""
    anon = _head_anon(generator, 100.0, "dp-pix")
    out = tmp_path_factory.mktemp("head") / "cross.mp4"
    clip = clips["cross"]
    return anon, anon.anonymize_video(clip.path, out, detect=_truth(clip)), out


def test_video_head_dp_pix_is_one_release_per_person_however_many_frames(
    clips: dict[str, Clip], head_run
) -> None:  # type: ignore[no-untyped-def]
    anon, res, out = head_run
    clip = clips["cross"]
    assert res.ok, res.error
    people = [t for t in res.tracks if t.frames >= clip.frames - 1]
    assert len(people) == 2 and len({t.group for t in people}) == 2
    for t in people:
        assert t.protection == "generator" and t.head is not None
        assert t.head["protection"] == "dp-pix" and not t.head["refused"]
        assert t.head["frames_released"] == t.frames and t.head["frames_masked"] == 0
        events = anon.ledger.events(t.subject)
        # the identity release, ONE head release for all the frames (and the DP fallback's
        # one release if some frame needed it): never one per frame
        assert [e["id"] for e in events if e["mechanism"] == "IdentityLaplace"] == [t.ledger_event]
        pix = sorted(e["id"] for e in events if e["mechanism"] == "DPPixelization")
        assert pix == sorted(e for e in (t.head["ledger_event"], t.fallback_event) if e)
        head = next(e for e in events if e["id"] == t.head["ledger_event"])
        assert head["epsilon"] == 2.0 and head["kind"] == "release"
        assert t.spent is not None and t.spent["epsilon"] == pytest.approx(
            sum(e["epsilon"] for e in events)
        )
    # every frame: a head box per face drawn, released from the frame and no longer the input
    src, _ = _frames(clip.path)
    dst, _ = _frames(out)
    assert len(res.heads) == clip.frames
    for i in range(clip.frames):
        assert [n for n, _, _ in res.heads[i]] == [
            n for n, _, how in res.regions[i] if how != "none"
        ]
        for _, (x0, y0, x1, y1), how in res.heads[i]:
            assert how == "dp-pix"
            ring = np.abs(src[i][y0:y1, x0:x1].astype(int) - dst[i][y0:y1, x0:x1]).mean()
            assert ring > 10, (i, ring)
    assert _unprotected(clip, res, out) == []


def test_video_head_leaves_everything_outside_the_head_boxes_and_faces(
    clips: dict[str, Clip], head_run
) -> None:  # type: ignore[no-untyped-def]
    _, res, out = head_run
    src, _ = _frames(clips["cross"].path)
    dst, _ = _frames(out)
    h, w = src[0].shape[:2]
    for i in range(len(src)):
        keep = np.ones((h, w), dtype=bool)
        for _, (x0, y0, x1, y1), _ in res.regions[i] + res.heads[i]:
            # 8 px beyond the boxes: H.264 (lossy, 4:2:0) smears their edges
            keep[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = False
        assert keep.mean() > 0.25
        diff = np.abs(src[i][keep].astype(int) - dst[i][keep])
        assert diff.mean() < 3.0, (i, diff.mean())  # the codec's error only (measured ~1.6)


def test_video_head_receipt_says_what_the_head_got(head_run) -> None:  # type: ignore[no-untyped-def]
    anon, res, _ = head_run
    r = res.receipt
    assert r["head"] == {
        "mode": "dp-pix",
        "box": "1.6 face widths, square",
        "epsilon": 2.0,
        "cells": 6,
        "m": 16,
    }
    heads = {t.head["ledger_event"] for t in res.tracks if t.head and t.head["ledger_event"]}
    releases = [e for e in anon.ledger.events() if e["kind"] == "release"]
    assert r["releases"] == len(releases) and len(heads) == 2
    assert (
        "everything outside the faces' head boxes and protected face regions"
        in (r["not_protected"])
    )
    for t in r["tracks"]:
        if t["head"]["protection"] != "dp-pix":
            continue
        covered = t["channels"]["covered"][-1]
        assert (
            covered.startswith("the head box") and "on every frame, following the face" in covered
        )
        assert "ONE release for the whole track" in covered and "over all the frames" in covered
        assert not any("outside the soft paste-back mask" in u for u in t["channels"]["uncovered"])
        assert any("beyond the head box" in u for u in t["channels"]["uncovered"])


def test_video_head_mask_is_grey_on_every_frame_and_charges_nothing(
    clips: dict[str, Clip], generator: SurrogateGenerator, tmp_path: Path
) -> None:
    clip = clips["still"]
    anon = _head_anon(generator, 100.0, "mask")
    res = anon.anonymize_video(clip.path, tmp_path / "o.mp4", detect=_truth(clip))
    (t,) = res.tracks
    assert t.status == "replaced" and t.head is not None
    assert t.head["protection"] == "mask" and t.head["ledger_event"] is None
    assert t.head["frames_masked"] == clip.frames and t.head["frames_released"] == 0
    assert [e["mechanism"] for e in anon.ledger.events(t.subject)] == ["IdentityLaplace"]
    dst, _ = _frames(tmp_path / "o.mp4")
    for i, frame in enumerate(dst):
        ((_, box, how),) = res.heads[i]
        assert how == "mask" and _grey_corners(frame, box), i
    assert res.receipt["head"] == {"mode": "mask", "box": "1.6 face widths, square"}


def test_video_head_refused_is_grey_and_the_refusal_recorded_once(
    clips: dict[str, Clip], generator: SurrogateGenerator, tmp_path: Path
) -> None:
    clip = clips["still"]
    anon = _head_anon(generator, 6.0, "dp-pix")  # the identity release only
    res = anon.anonymize_video(clip.path, tmp_path / "o.mp4", detect=_truth(clip))
    (t,) = res.tracks
    assert t.status == "replaced" and t.head is not None
    assert t.head["protection"] == "mask" and t.head["refused"]
    assert "head release refused" in t.head["reason"] and t.head["frames_masked"] == clip.frames
    assert [e["mechanism"] for e in anon.ledger.events(t.subject)] == ["IdentityLaplace"]
    assert len(anon.ledger.events(t.subject, kinds=("refusal",))) == 1  # not one per frame
    dst, _ = _frames(tmp_path / "o.mp4")
    assert all(_grey_corners(dst[i], res.heads[i][0][1]) for i in range(clip.frames))
    assert res.receipt["tracks"][0]["head"]["refused"] is True
    # a person whose own release is refused: grey head, nothing charged for it
    broke = _head_anon(generator, 1.0, "dp-pix")
    res = broke.anonymize_video(clip.path, tmp_path / "b.mp4", detect=_truth(clip))
    (t,) = res.tracks
    assert t.refused and t.status == "masked" and t.head is not None
    assert t.head["protection"] == "mask" and not t.head["refused"]
    assert t.head["reason"] == "the person's own release was refused"
    assert [e["kind"] for e in broke.ledger.events(t.subject, kinds=("release", "refusal"))] == [
        "refusal"
    ]
    dst, _ = _frames(tmp_path / "b.mp4")
    x0, y0, x1, y1 = res.heads[3][0][1]
    assert np.abs(dst[3][y0 + 4 : y1 - 4, x0 + 4 : x1 - 4].astype(int) - MASK_VALUE).mean() < 4


# ----------------------------------------------------------------------------- I/O


def test_audio_kept_or_dropped_and_metadata_stripped(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    clip = clips["meta"]
    with av.open(str(clip.path)) as c:
        assert {"location", "title"} <= set(c.metadata)  # the input carries them
    kept = _pix().anonymize_video(clip.path, tmp_path / "k.mp4", detect=_truth(clip))
    dropped = _pix().anonymize_video(
        clip.path, tmp_path / "d.mp4", audio="drop", detect=_truth(clip)
    )
    with av.open(str(tmp_path / "k.mp4")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        tags = dict(c.metadata)
        for s in c.streams:
            tags.update(s.metadata)
        assert not {"location", "location-eng", "make", "model", "title", "creation_time"} & set(
            tags
        ), tags
        with av.open(str(clip.path)) as src:
            a_in = [bytes(p) for p in src.demux(audio=0) if p.size]
        a_out = [bytes(p) for p in c.demux(audio=0) if p.size]
        assert a_in == a_out  # stream copy: the same audio packets
    with av.open(str(tmp_path / "d.mp4")) as c:
        assert [s.type for s in c.streams] == ["video"]
    # frame count, frame rate and duration kept
    a, b = probe(clip.path), probe(tmp_path / "k.mp4")
    assert (b.fps, b.width, b.height) == (a.fps, a.width, a.height)
    assert b.duration == pytest.approx(a.duration, abs=1e-3)
    assert len(_frames(tmp_path / "k.mp4")[1]) == clip.frames == kept.frames
    assert "NOT protected" in kept.receipt["video"]["audio"]
    assert dropped.receipt["video"]["audio"] == "dropped"
    assert not any("audio track" in x for x in dropped.receipt["not_protected"])


def test_vfr_timestamps_frame_count_and_duration_kept(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    clip = clips["vfr"]
    res = _pix().anonymize_video(clip.path, tmp_path / "o.mkv", detect=_truth(clip))
    _, t_in = _frames(clip.path)
    _, t_out = _frames(tmp_path / "o.mkv")
    assert len(t_out) == len(t_in) == clip.frames
    assert t_out == pytest.approx(t_in, abs=1e-6)
    assert len(set(np.round(np.diff(t_in), 4))) > 1  # really variable
    assert res.receipt["video"]["variable_frame_rate"] is True
    with av.open(str(tmp_path / "o.mkv")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]


def test_rotated_clip_decoded_and_written_upright(clips: dict[str, Clip], tmp_path: Path) -> None:
    clip = clips["rot"]
    info = probe(clip.path)
    assert info.rotation == 270 and (info.width, info.height) == (320, 240)
    res = _pix().anonymize_video(clip.path, tmp_path / "o.mov", detect=_truth(clip))
    assert "upright" in res.receipt["video"]["rotation"]
    with av.open(str(tmp_path / "o.mov")) as c:
        f = next(c.decode(video=0))
        assert (f.width, f.height, f.rotation or 0) == (320, 240, 0)
    assert _unprotected(clip, res, tmp_path / "o.mov") == []


@pytest.mark.parametrize("name,codec,audio", [("webm", "vp9", "opus"), ("avi", "h264", "aac")])
def test_other_containers(
    clips: dict[str, Clip], tmp_path: Path, name: str, codec: str, audio: str
) -> None:
    clip = clips[name]
    out = tmp_path / f"o{clip.path.suffix}"
    res = _pix().anonymize_video(clip.path, out, detect=_truth(clip))
    assert res.ok and res.frames == clip.frames
    with av.open(str(out)) as c:
        assert [s.codec_context.name for s in c.streams] == [codec, audio]
    assert _unprotected(clip, res, out) == []


def test_corrupt_video_is_reported_and_charges_nothing(
    tmp_path: Path, clips: dict[str, Clip]
) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    anon = _pix()
    res = anon.anonymize_video(bad, tmp_path / "o.mp4")
    assert not res.ok and "video" in (res.error or "") and res.output is None
    assert str(tmp_path) not in str(res.receipt) and res.receipt["source"] == "bad.mp4"
    assert not (tmp_path / "o.mp4").exists()
    assert anon.ledger.events() == [] or all(e["kind"] != "release" for e in anon.ledger.events())
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(clips["still"].path.read_bytes()[:600])
    assert not anon.anonymize_video(trunc, tmp_path / "t.mp4").ok


# ----------------------------------------------------------------------------- pieces


def test_mean_identity_is_a_unit_vector() -> None:
    rng = np.random.default_rng(0)
    vs = [v / np.linalg.norm(v) for v in rng.normal(size=(5, 16))]
    m = mean_identity(vs)
    assert m is not None and np.linalg.norm(m) == pytest.approx(1.0)
    assert mean_identity([vs[0], -vs[0]]) is not None  # cancelling means fall back to one
    assert mean_identity([]) is None


def test_one_euro_smooths_jitter_without_lag() -> None:
    t = np.arange(60) / 30.0
    truth = np.stack([100 + 200 * t, 50 + 0 * t], axis=1)
    noisy = truth + np.random.default_rng(1).normal(0, 2, truth.shape)
    sm = smooth_track(t, noisy)
    assert np.abs(sm - truth)[5:-5].mean() < np.abs(noisy - truth)[5:-5].mean()
    assert abs(float((sm - truth)[5:-5, 0].mean())) < 1.0  # no lag behind the motion
    assert one_euro(t, noisy).shape == noisy.shape


def test_find_tracks_and_is_video(clips: dict[str, Clip]) -> None:
    assert is_video("a/B.MP4") and is_video("x.webm") and not is_video("x.jpg")
    tracks = find_tracks(clips["still"].path, detect_every=4)
    assert tracks and tracks[0].number == 1


def test_import_dpface_does_not_import_av() -> None:
    code = "import sys, dpface; import dpface.pipeline; sys.exit('av' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_anonymize_video_options_are_checked(clips: dict[str, Clip], tmp_path: Path) -> None:
    anon = _pix()
    with pytest.raises(ValueError):
        anonymize_video(anon, clips["still"].path, tmp_path / "o.mp4", audio="mute")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        anon.anonymize_video(clips["still"].path, tmp_path / "o.mp4", detect_every=0)
    with pytest.raises(ValueError):
        anon.anonymize_video(clips["still"].path, tmp_path / "o.png")


# ----------------------------------------------------------------------------- command line


def test_cli_folder_mixing_photos_and_videos(clips: dict[str, Clip], tmp_path: Path) -> None:
    import json
    import shutil

    from typer.testing import CliRunner

    from dpface.cli import app

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(clips["meta"].path, src / "clip.mp4")
    shutil.copy(Path(__file__).parents[2] / "assets" / "samples" / "fr-obama.jpg", src / "sub")
    (src / "broken.mov").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "anonymize",
            str(src),
            "-o",
            str(out),
            "-m",
            "dp-pix",
            "--ledger",
            str(tmp_path / "l.db"),
            "--audio",
            "drop",
            "--detect-every",
            "2",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["videos"] == 1 and summary["images"] == 1
    assert summary["frames"] == clips["meta"].frames
    assert [p["input"].endswith("broken.mov") for p in summary["problems"]] == [True]
    assert (out / "sub" / "fr-obama.png").is_file()
    with av.open(str(out / "clip.mp4")) as c:
        assert [s.type for s in c.streams] == ["video"]  # --audio drop
        assert not {"location", "title"} & set(c.metadata)
    receipt = json.loads((out / "clip.mp4.receipt.json").read_text())
    assert receipt["schema"] == "dpface.video-receipt/1" and receipt["output"] == "clip.mp4"
    assert receipt["detection"]["detect_every"] == 2
    assert str(tmp_path) not in json.dumps(receipt)
    assert (out / "broken.mov.receipt.json").is_file()


def test_missing_pyav_is_a_problem_of_the_video(
    clips: dict[str, Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dpface.video as video
    from dpface.errors import InputError

    def missing() -> None:
        raise InputError("video needs PyAV and motpy (av is missing): pip install 'dpface[video]'")

    monkeypatch.setattr(video, "_av", missing)
    res = _pix().anonymize_video(clips["still"].path, tmp_path / "o.mp4")
    assert not res.ok and "dpface[video]" in (res.error or "")


def test_the_run_summary_counts_a_video_tracks_fallbacks_and_unsure_tracks(tmp_path: Path) -> None:
    """Obama half covered by Biden's photo mid-clip: that track's occluded frame gets the DP
    fallback; the batch summary counts it as the photo path counts its fallbacks."""
    import json

    from dpface.config import AnonymizeConfig

    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "clip.mp4", frames=30, size=(640, 360), people=two_people(30, (640, 360)))
    config = AnonymizeConfig(ledger=tmp_path / "l.db", workers=1)
    summary = config.run([src], tmp_path / "out")
    tracks = json.loads((tmp_path / "out" / "clip.mp4.receipt.json").read_text())["tracks"]
    fallback = sum(t["protection"] == "dp-fallback" or t["fallback_frames"] > 0 for t in tracks)
    assert fallback >= 1  # the occluded frame
    assert summary.fallback == fallback
    assert summary.uncertain == sum(bool(t["uncertain"]) for t in tracks)
    assert summary.faces == len(tracks)
    report = (tmp_path / "out" / "report.json").read_text()
    assert "0 photo(s) and 1 video(s) with" in report  # the run report knows it was a video
