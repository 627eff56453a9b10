"""Face tracks across the frames of a video: association, gap filling and temporal smoothing.

* **Association** is motpy's ``MultiObjectTracker`` (Kalman filter with constant velocity,
  Hungarian matching on box IoU, optionally weighted by the cosine similarity of the raw
  identity embeddings). It runs on the frames that were searched (every frame, or every k-th)
  and keeps a track alive through ``max_gap`` frames without a matching detection, so a face
  the detector misses for a moment stays one track.
* **Gap filling** (offline, after the whole video was searched): a frame inside a track that
  has no detection of it -- the detector missed it, or the frame was not searched -- gets a box
  and landmarks interpolated between the track's detections before and after it. The frames
  just before a track's first detection and just after its last one that were not searched
  (and ``pad`` more) get boxes extrapolated at the track's velocity. Every such frame is
  protected like a detected one and counted as "protected only by prediction".
* **Smoothing**: boxes and landmarks go through a One Euro filter (Casiez et al., CHI 2012) run
  forward and backward and averaged, so the replacement does not jitter and does not lag behind
  a moving face.

Nothing here sees the privacy mechanism: tracks only decide where faces are and which
detections belong to one person (trusted side).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["Detection", "FaceTracker", "Track", "TrackFrame", "one_euro", "smooth_track"]

Source = Literal["detected", "interpolated", "extrapolated"]


@dataclass
class Detection:
    """One face found by the detector in one frame (raw, trusted side)."""

    frame: int
    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)  # (68, 2) photo pixels
    score: float
    uncertain: bool
    landmarks_ok: bool
    detector: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)  # unit vector or None


@dataclass
class TrackFrame:
    """Where a track's face is in one frame, and how that was known."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray = field(repr=False)
    source: Source
    landmarks_ok: bool
    uncertain: bool


@dataclass
class Track:
    """One face followed through the video. ``number`` is 1-based, in order of first
    appearance (then left to right): the number receipts and ``subjects=`` use."""

    number: int
    detections: list[Detection]
    frames: dict[int, TrackFrame] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return min(self.frames)

    @property
    def last(self) -> int:
        return max(self.frames)

    def count(self, source: Source) -> int:
        return sum(f.source == source for f in self.frames.values())

    def embeddings(self) -> list[np.ndarray]:
        """Raw embeddings of the track's confident detections with usable landmarks."""
        return [
            d.embedding
            for d in self.detections
            if d.embedding is not None and not d.uncertain and d.landmarks_ok
        ]

    def best(self) -> Detection:
        """The detection to represent the track (confident, usable landmarks, top score)."""
        return max(
            self.detections, key=lambda d: (not d.uncertain, d.landmarks_ok, d.score, -d.frame)
        )


# ----------------------------------------------------------------------------- One Euro


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(
    times: Sequence[float] | np.ndarray,
    values: np.ndarray,
    *,
    min_cutoff: float = 1.0,
    beta: float = 0.02,
    d_cutoff: float = 1.0,
) -> np.ndarray:
    """One Euro filter over rows of ``values`` (n, ...) sampled at ``times`` (seconds,
    increasing; variable steps are fine). The cutoff rises with the speed of change
    (``min_cutoff + beta * |speed|``): still faces are smoothed hard, moving ones follow."""
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    if len(x) == 0:
        return out
    out[0] = x[0]
    dx = np.zeros_like(x[0])
    for i in range(1, len(x)):
        dt = max(float(times[i]) - float(times[i - 1]), 1e-4)
        a_d = _alpha(d_cutoff, dt)
        dx = a_d * (x[i] - out[i - 1]) / dt + (1 - a_d) * dx
        cutoff = min_cutoff + beta * np.abs(dx)
        a = _alpha(cutoff, dt)
        out[i] = a * x[i] + (1 - a) * out[i - 1]
    return out


def smooth_track(
    times: Sequence[float] | np.ndarray, values: np.ndarray, **kwargs: float
) -> np.ndarray:
    """Zero-lag One Euro smoothing: the mean of a forward and a backward pass (offline)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 3:
        return x.copy()
    t = np.asarray(times, dtype=np.float64)
    fwd = one_euro(t, x, **kwargs)
    bwd = one_euro(t[-1] - t[::-1], x[::-1], **kwargs)[::-1]
    return np.asarray(0.5 * (fwd + bwd), dtype=np.float64)


# ----------------------------------------------------------------------------- association


class _Recorder:
    """motpy matching function that remembers which tracker got which detection."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pairs: list[tuple[Any, int]] = []

    def __call__(self, trackers: Sequence[Any], detections: Sequence[Any]) -> np.ndarray:
        matches = self.inner(trackers, detections)
        self.pairs = [(trackers[int(r)], int(c)) for r, c in matches]
        return np.asarray(matches)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Links per-frame detections into tracks with motpy; :meth:`finish` fills and smooths.

    ``fps``: the video's average frame rate; ``detect_every``: the detector runs on every k-th
    frame (:meth:`step` is called for those only); ``max_gap``: frames a track survives without
    a detection (then a new detection starts a new track, which re-entry linking may join);
    ``pad``: frames protected by extrapolation beyond a track's first/last detection in
    addition to the unsearched frames there; ``use_embeddings``: weight the matching by raw
    embedding similarity (helps when faces cross)."""

    def __init__(
        self,
        *,
        fps: float,
        detect_every: int = 1,
        max_gap: int = 12,
        pad: int = 1,
        use_embeddings: bool = True,
        min_iou: float = 0.1,
    ) -> None:
        from motpy import MultiObjectTracker
        from motpy.tracker import IOUAndFeatureMatchingFunction

        self.detect_every = detect_every
        self.max_gap = max_gap
        self.pad = pad
        steps = math.ceil(max_gap / detect_every)
        inner = IOUAndFeatureMatchingFunction(
            min_iou=min_iou, feature_similarity_beta=0.5 if use_embeddings else None
        )
        self._match = _Recorder(inner)
        self._mot = MultiObjectTracker(
            dt=detect_every / max(fps, 1e-3),
            model_spec="constant_velocity_and_static_box_size_2d",
            matching_fn=self._match,
            tracker_kwargs={"max_staleness": steps + 1},
        )
        self._dets: dict[str, list[Detection]] = {}
        self._order: list[str] = []

    def step(self, detections: Sequence[Detection]) -> None:
        """One searched frame's detections (possibly none)."""
        from motpy import Detection as MotDetection

        before = {id(t) for t in self._mot.trackers}
        mot = [
            MotDetection(
                box=np.asarray(d.box, dtype=np.float64), score=d.score, feature=d.embedding
            )
            for d in detections
        ]
        self._match.pairs = []
        self._mot.step(mot)
        matched = set()
        for tracker, c in self._match.pairs:
            matched.add(c)
            self._add(tracker.id, detections[c])
        new = [t for t in self._mot.trackers if id(t) not in before]
        for c, det in enumerate(detections):
            if c in matched:
                continue
            # the tracker motpy created for this unmatched detection starts at its box
            best = max(new, key=lambda t: _iou(t.box(), det.box), default=None)
            if best is None:  # pragma: no cover - motpy creates one per unmatched detection
                raise RuntimeError("motpy did not create a track for an unmatched detection")
            new.remove(best)
            self._add(best.id, det)

    def _add(self, tid: str, det: Detection) -> None:
        if tid not in self._dets:
            self._dets[tid] = []
            self._order.append(tid)
        self._dets[tid].append(det)

    def finish(
        self,
        n_frames: int,
        size: tuple[int, int],
        times: Sequence[float],
        *,
        smooth: bool = True,
    ) -> list[Track]:
        """The tracks, numbered by first appearance, with every frame they cover filled in
        (interpolated/extrapolated) and smoothed. ``size`` is (height, width)."""
        raw = [sorted(self._dets[t], key=lambda d: d.frame) for t in self._order]
        raw.sort(key=lambda ds: (ds[0].frame, ds[0].box[0], ds[0].box[1]))
        tracks = []
        for n, dets in enumerate(raw, start=1):
            track = Track(n, dets)
            self._fill(track, n_frames, size)
            if smooth:
                _smooth(track, times)
            tracks.append(track)
        return tracks

    def _fill(self, track: Track, n_frames: int, size: tuple[int, int]) -> None:
        dets = track.detections
        h, w = size
        for d in dets:
            track.frames[d.frame] = TrackFrame(
                d.box, d.landmarks.astype(np.float64), "detected", d.landmarks_ok, d.uncertain
            )
        for a, b in itertools.pairwise(dets):
            span = b.frame - a.frame
            for f in range(a.frame + 1, b.frame):
                t = (f - a.frame) / span
                x0, y0, x1, y1 = (float(u + t * (v - u)) for u, v in zip(a.box, b.box, strict=True))
                lm = (1 - t) * a.landmarks + t * b.landmarks
                track.frames[f] = TrackFrame(
                    (x0, y0, x1, y1),
                    lm,
                    "interpolated",
                    a.landmarks_ok and b.landmarks_ok,
                    a.uncertain or b.uncertain,
                )
        reach = self.detect_every - 1 + self.pad
        ends = [(dets[0], dets[1] if len(dets) > 1 else None, -1), (dets[-1], None, 1)]
        if len(dets) > 1:
            ends[1] = (dets[-1], dets[-2], 1)
        for anchor, other, sign in ends:
            if other is not None and other.frame != anchor.frame:
                step = (np.asarray(anchor.box) - np.asarray(other.box)) / abs(
                    anchor.frame - other.frame
                )
                lstep = (anchor.landmarks - other.landmarks) / abs(anchor.frame - other.frame)
                bw = anchor.box[2] - anchor.box[0]
                limit = 0.25 * bw  # at most a quarter of the face width per frame
                scale = min(1.0, limit / max(float(np.abs(step).max()), 1e-9))
                step, lstep = step * scale, lstep * scale
            else:
                step, lstep = np.zeros(4), np.zeros((68, 2))
            for k in range(1, reach + 1):
                f = anchor.frame + sign * k
                if f < 0 or f >= n_frames or f in track.frames:
                    break
                box = np.asarray(anchor.box) + step * k
                if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
                    break  # left the picture
                track.frames[f] = TrackFrame(
                    (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    anchor.landmarks + lstep * k,
                    "extrapolated",
                    anchor.landmarks_ok,
                    anchor.uncertain,
                )


def _smooth(track: Track, times: Sequence[float]) -> None:
    frames = sorted(track.frames)
    # smooth each contiguous run of frames separately
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][-1] + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    for run in runs:
        if len(run) < 3:
            continue
        t = [times[f] for f in run]
        boxes = np.array([track.frames[f].box for f in run])
        lms = np.stack([track.frames[f].landmarks for f in run]).reshape(len(run), -1)
        sb = smooth_track(t, boxes, min_cutoff=1.0, beta=0.05)
        sl = smooth_track(t, lms, min_cutoff=1.0, beta=0.05).reshape(len(run), 68, 2)
        for i, f in enumerate(run):
            old = track.frames[f]
            track.frames[f] = TrackFrame(
                (float(sb[i, 0]), float(sb[i, 1]), float(sb[i, 2]), float(sb[i, 3])),
                sl[i],
                old.source,
                old.landmarks_ok,
                old.uncertain,
            )
