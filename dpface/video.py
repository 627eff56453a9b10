"""Video de-identification: one privatised identity per person-track, every frame protected.

``anonymize_video(anonymizer, "clip.mp4", "out/clip.mp4")`` (or
``Anonymizer.anonymize_video``) works in two passes over the decoded frames:

1. **Analyse** (nothing is charged): frames are decoded upright, the default detector
   (``dpface.detect.detect_array``) searches every frame (or every ``detect_every``-th), the
   raw identity of each confident face is embedded, and motpy links detections into tracks
   (``dpface.tracking``): gaps up to ``max_gap`` frames are bridged, and frames of a track
   without a detection get interpolated/extrapolated boxes (protected anyway, counted as
   "protected only by prediction"). Tracks of the same person (leaving and re-entering) may be
   linked on the trusted side by embedding similarity (``link_tracks``).
2. **Release and render**: each group of linked tracks is charged ONCE to its privacy unit
   (its subject when named, else a unit keyed by a keyed digest of the video's decoded frames
   and the track's first box), and released once: for an identity mechanism the input is the
   normalised mean of the group's raw embeddings (a unit vector, so the mechanism's sensitivity
   is unchanged), and the one privatised identity is reused on every frame (post-processing);
   for DP-Pix/DP-Blur the face regions of all the group's frames form one release (see
   docs/video.md for the neighbouring relation). Landmarks are smoothed over time (One Euro),
   so the surrogate does not flicker. A refused budget masks the group's faces on every frame.
   With head protection (``Anonymizer(head="dp-pix" | "mask")``, :mod:`dpface.head`) each
   face's head box is then released on every frame with DP-Pix from that frame's pixels
   (fresh noise per frame, ONE head release charged per group at its first frame) or painted
   grey, and the face's own protection is put back on top.

Output: the same container type, resolution (upright), frame count and timestamps (pts in
the input's time base, variable frame rate kept); audio streams copied (not re-encoded) or
dropped with ``audio="drop"``; every other stream (subtitles, data such as GPS tracks, cover
pictures) and all container and stream metadata (GPS location, device, creation time) are
left out. The receipt (``dpface.video-receipt/1``) lists per track its frames, release and
spend, and never a path.

PyAV (``pip install 'dpface[video]'``) is imported only when a video is read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import InputError
from .tracking import Detection, FaceTracker, Track

if TYPE_CHECKING:
    from .pipeline import Anonymizer

__all__ = [
    "VIDEO_RECEIPT_SCHEMA",
    "VIDEO_SUFFIXES",
    "TrackRecord",
    "VideoInfo",
    "VideoResult",
    "anonymize_video",
    "find_tracks",
    "is_video",
    "probe",
]

VIDEO_RECEIPT_SCHEMA = "dpface.video-receipt/1"
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
AudioMode = Literal["keep", "drop"]
Progress = Callable[[str, int, int], None]  # (stage, frames done, frames expected)
AUDIO_UNCOVERED = "the audio track (voices, names spoken, sounds of the place): copied unchanged"
TRACKING_UNCOVERED = (
    "the track's path: where and when the face appears, moves and leaves (boxes come from "
    "raw detections and tracking)"
)
VIDEO_LINK_UNCOVERED = (
    "the raw biometric matching that linked this track to the same person's other tracks in "
    "this video (trusted side): it decided that they share one identity and one release"
)


def is_video(path: str | Path) -> bool:
    """True when the file name has a video suffix dpface reads."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
        import motpy  # noqa: F401  (the tracker: checked here, imported where it is used)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise InputError(
            f"video needs PyAV and motpy ({err.name} is missing): pip install 'dpface[video]'"
        ) from err
    av.logging.set_level(None)  # FFmpeg's messages come back in the exceptions, not stderr
    return av


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds (first video stream), as dpface reads it."""

    width: int  # upright (after rotation)
    height: int
    frames: int  # from the container; 0 when unknown (counted while decoding)
    fps: float  # average frame rate
    time_base: str  # the video stream's time base ("1/15360")
    duration: float | None  # seconds
    rotation: int  # degrees counter-clockwise applied to decode upright (0, 90, 180, 270)
    codec: str
    container: str
    audio: tuple[str, ...]  # codecs of the audio streams
    other_streams: tuple[str, ...]  # streams that are never copied (subtitles, data, ...)
    metadata_keys: tuple[str, ...]  # container/stream metadata keys found (never copied)


def _rotation_of(stream: Any, frame: Any = None) -> int:
    """Counter-clockwise degrees that turn the decoded picture upright (display matrix side
    data, else the legacy ``rotate`` tag, which is clockwise)."""
    deg = 0
    if frame is not None:
        try:
            deg = round(frame.rotation or 0)
        except (AttributeError, ValueError, TypeError):
            deg = 0
    if deg == 0:
        tag = stream.metadata.get("rotate")
        if tag is not None:
            try:
                deg = -int(float(tag))
            except ValueError:
                deg = 0
    return round(deg / 90.0) % 4 * 90


def _open(path: str | Path) -> Any:
    av = _av()
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"could not read the video: {err}") from err
    if not container.streams.video:
        container.close()
        raise InputError("the file has no video stream")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Read a video's header and first frame (for its rotation); raises ``InputError``."""
    av = _av()
    with _open(path) as c:
        v = c.streams.video[0]
        rot = _rotation_of(v)
        try:
            for frame in c.decode(v):
                rot = _rotation_of(v, frame)
                break
        except av.error.FFmpegError as err:
            raise InputError(f"could not decode the video: {err}") from err
        w, h = v.codec_context.width, v.codec_context.height
        if rot in (90, 270):
            w, h = h, w
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else 0.0
        dur = None
        if v.duration is not None and v.time_base is not None:
            dur = float(v.duration * v.time_base)
        elif c.duration is not None:
            dur = c.duration / 1_000_000
        keys = set(c.metadata)
        for s in c.streams:
            keys |= set(s.metadata)
        audio = tuple(s.codec_context.name for s in c.streams.audio)
        others = tuple(
            f"{s.type}:{getattr(s.codec_context, 'name', None) or 'data'}"
            for s in c.streams
            if s.type not in ("audio",) and s.index != v.index
        )
        return VideoInfo(
            width=int(w),
            height=int(h),
            frames=int(v.frames or 0),
            fps=fps,
            time_base=str(v.time_base),
            duration=dur,
            rotation=rot,
            codec=v.codec_context.name,
            container=c.format.name,
            audio=audio,
            other_streams=others,
            metadata_keys=tuple(sorted(keys)),
        )


@dataclass
class _Frame:
    index: int
    pts: int
    time: float  # seconds
    rgb: np.ndarray


def _upright(frame: Any, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        rgb = np.rot90(rgb, rotation // 90)
    return np.ascontiguousarray(rgb)


def _frames(container: Any, packets: Iterator[Any] | None = None) -> Iterator[tuple[Any, Any]]:
    """(packet or None, frame) pairs: decoded video frames, and the other packets as they
    come when ``packets`` demuxes several streams."""
    v = container.streams.video[0]
    if packets is None:
        for frame in container.decode(v):
            yield None, frame
        return
    for packet in packets:
        if packet.stream.index == v.index:
            for frame in packet.decode():
                yield None, frame
        else:
            yield packet, None


class _Clock:
    """Monotonic presentation timestamps (a frame without pts gets the previous + 1 frame)."""

    def __init__(self, stream: Any) -> None:
        rate = stream.average_rate or stream.guessed_rate or 25
        self.tb = stream.time_base
        self.step = max(1, round(1 / (float(rate) * float(self.tb)))) if self.tb else 1
        self.last: int | None = None

    def pts(self, frame: Any) -> int:
        p = frame.pts
        if p is None:
            p = 0 if self.last is None else self.last + self.step
        if self.last is not None and p <= self.last:
            p = self.last + 1
        self.last = int(p)
        return int(p)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrackRecord:
    """What happened to one track. ``subject`` is the ledger's unit (trusted side); ``unit``
    is how receipts show it."""

    track: int
    group: int  # tracks of one group share one release
    first_frame: int
    last_frame: int
    frames: int
    detected: int
    interpolated: int
    extrapolated: int
    subject: str
    unit: str
    status: str  # "replaced" | "pixelized" | "masked"
    protection: str  # "generator" | "mechanism" | "dp-fallback" | "mask"
    identity: str = "none"  # "fresh draw" | "reused pseudonym" | "none"
    ledger_event: int | None = None  # the group's one release (None when reused/refused)
    fallback_event: int | None = None  # DP-Pix fallback release for frames it needed
    fallback_frames: int = 0
    masked_frames: int = 0
    refused: bool = False
    reason: str | None = None
    spent: dict[str, float] | None = None
    remaining_epsilon: float | None = None
    linked: bool = False  # linked to other tracks of this video by raw matching
    named: bool = False
    enrolled_link: bool = False  # charged to an enrolled subject by template matching
    uncertain: bool = False  # no confident detection in the track
    channels: dict[str, list[str]] | None = None
    # head protection (dpface.head): protection, ledger event, frames released / masked...
    head: dict[str, Any] | None = None

    def as_receipt(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "subject"}
        if self.enrolled_link:
            for key in ("spent", "remaining_epsilon", "ledger_event", "fallback_event"):
                out[key] = None
            if out["head"] is not None:
                out["head"] = {**out["head"], "ledger_event": None}
        return out


@dataclass
class VideoResult:
    """One input video: where the output went, its tracks and receipt (``error`` when it
    could not be done; then nothing was written and, if the video could not be read,
    nothing was charged)."""

    source: str
    output: Path | None
    tracks: list[TrackRecord]
    receipt: dict[str, Any]
    frames: int = 0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # per frame: (track number, protected region (x0, y0, x1, y1), how) for every face
    regions: list[list[tuple[int, tuple[int, int, int, int], str]]] = field(
        default_factory=list, repr=False
    )
    # per frame, with head protection: (track number, head box, "dp-pix" | "mask")
    heads: list[list[tuple[int, tuple[int, int, int, int], str]]] = field(
        default_factory=list, repr=False
    )
    predicted_frames: int = 0  # frames where some face was protected only by prediction
    pts: list[int] = field(default_factory=list, repr=False)  # output timestamps (time base)

    @property
    def ok(self) -> bool:
        return self.error is None


# ----------------------------------------------------------------------------- analysis


@dataclass
class _Analysis:
    tracks: list[Track]
    times: list[float]
    pts: list[int]
    size: tuple[int, int]  # (height, width)
    digest: bytes
    rotation: int
    searched: int
    min_face_px: int | None
    detection_errors: list[str]


def _default_detect(detector: str) -> Callable[[np.ndarray], Any]:
    from .detect import detect_array

    def run(rgb: np.ndarray) -> Any:
        return detect_array(rgb, source="<frame>", detector=detector)

    return run


def _analyse(
    anonymizer: Anonymizer | None,
    source: str | Path,
    *,
    detector: str,
    detect_every: int,
    max_gap: int,
    pad: int,
    embed: bool,
    progress: Progress | None,
    detect: Callable[[np.ndarray], Any] | None,
    timings: dict[str, float],
) -> _Analysis:
    av = _av()
    find = detect if detect is not None else _default_detect(detector)
    encoder: Any = None
    if embed and anonymizer is not None:
        encoder = anonymizer._encoder_for()
    with _open(source) as c:
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        rate = v.average_rate or v.guessed_rate or 25
        expected = int(v.frames or 0) or (
            round(float(c.duration / 1_000_000) * float(rate)) if c.duration else 0
        )
        tracker = FaceTracker(fps=float(rate), detect_every=detect_every, max_gap=max_gap, pad=pad)
        clock = _Clock(v)
        digest = hashlib.sha256(b"dpface-video|")
        times: list[float] = []
        pts: list[int] = []
        rotation: int | None = None
        size: tuple[int, int] | None = None
        searched, min_px, errors = 0, None, []
        index = 0
        try:
            for _, frame in _frames(c):
                t = time.perf_counter()
                if rotation is None:
                    rotation = _rotation_of(v, frame)
                rgb = _upright(frame, rotation)
                if size is None:
                    size = (rgb.shape[0], rgb.shape[1])
                elif (rgb.shape[0], rgb.shape[1]) != size:
                    raise InputError(
                        f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]} but the video started "
                        f"at {size[1]}x{size[0]}: resolution changes are not supported"
                    )
                p = clock.pts(frame)
                pts.append(p)
                times.append(float(p * v.time_base) if v.time_base else index / float(rate))
                digest.update(rgb.tobytes())
                t = _tick(timings, "decode", t)
                if index % detect_every == 0:
                    found = find(rgb)
                    searched += 1
                    t = _tick(timings, "detect", t)
                    if not found.ok:
                        errors.append(f"frame {index}: {found.error}")
                        dets: list[Detection] = []
                    else:
                        if found.min_face_px is not None:
                            min_px = found.min_face_px
                        dets = _detections(index, found.faces, encoder)
                        t = _tick(timings, "embed", t)
                    tracker.step(dets)
                    _tick(timings, "track", t)
                index += 1
                if progress is not None:
                    progress("analyse", index, max(expected, index))
        except av.error.FFmpegError as err:
            raise InputError(f"could not decode frame {index}: {err}") from err
        if index == 0 or size is None:
            raise InputError("the video has no decodable frame")
        t = time.perf_counter()
        tracks = tracker.finish(index, size, times)
        _tick(timings, "track", t)
        return _Analysis(
            tracks,
            times,
            pts,
            size,
            digest.digest(),
            rotation or 0,
            searched,
            min_px,
            errors,
        )


def _detections(index: int, faces: list[Any], encoder: Any) -> list[Detection]:
    embs: list[np.ndarray | None] = [None] * len(faces)
    if encoder is not None and faces:
        sure = [i for i, f in enumerate(faces) if not f.uncertain and f.landmarks_ok]
        if sure:
            out = np.asarray(encoder.embed([faces[i] for i in sure]), dtype=np.float64)
            for i, e in zip(sure, out, strict=True):
                n = float(np.linalg.norm(e))
                embs[i] = e / n if n > 0 else None
    return [
        Detection(
            index,
            f.box,
            np.asarray(f.landmarks68, dtype=np.float64),
            float(f.score),
            bool(f.uncertain),
            bool(f.landmarks_ok),
            f.detector,
            embs[i],
        )
        for i, f in enumerate(faces)
    ]


def _tick(timings: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - since
    return now


def find_tracks(
    source: str | Path,
    *,
    detector: str | None = None,
    detect_every: int = 1,
    max_gap: int | None = None,
    pad: int = 1,
) -> list[Track]:
    """The face tracks of a video as ``anonymize_video`` would number them (no embedding,
    nothing charged): use it to name people with ``subjects={track number: name}``.
    Without embeddings the matching uses boxes only, so crossing faces may be numbered
    differently than in a run that embeds them; name people in single-person clips with
    ``subject=`` instead when in doubt."""
    from .detect import DEFAULT_DETECTOR

    info = probe(source)
    gap = max_gap if max_gap is not None else _default_gap(info.fps)
    return _analyse(
        None,
        source,
        detector=detector or DEFAULT_DETECTOR,
        detect_every=_check_every(detect_every),
        max_gap=gap,
        pad=pad,
        embed=False,
        progress=None,
        detect=None,
        timings={},
    ).tracks


def _default_gap(fps: float) -> int:
    return max(5, round((fps or 25) * 0.5))  # half a second


def _check_every(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 300:
        raise ValueError("detect_every must be an integer from 1 to 300")
    return k


# ----------------------------------------------------------------------------- grouping


@dataclass
class _Group:
    number: int
    tracks: list[Track]
    name: str | None = None  # the caller's name for these tracks
    linked: bool = False  # joined by raw matching within the video
    kind: str = "generator"  # "generator" | "fallback" | "mechanism"
    embedding: np.ndarray | None = None  # normalised mean of the raw embeddings
    subject: str = ""
    shown: str = ""
    enrolled_link: bool = False
    # release state
    identity: np.ndarray | None = None
    how: str = "none"
    event: int | None = None
    refused: str | None = None
    fallback_event: int | None = None
    fallback_refused: str | None = None
    head: str | None = None  # head protection once decided: "dp-pix" | "mask"
    head_event: int | None = None  # the group's one head release
    head_reason: str | None = None  # why the head is grey
    head_refused: bool = False  # the head release was refused by the budget
    channel: Any = None  # attribute channel (steering), released once per group
    steer_note: str | None = None
    channels: dict[str, list[str]] | None = None

    def frames(self) -> set[int]:
        return {f for t in self.tracks for f in t.frames}


def mean_identity(embeddings: list[np.ndarray]) -> np.ndarray | None:
    """The normalised mean of unit vectors: again a unit vector (None if they cancel)."""
    if not embeddings:
        return None
    m = np.mean(np.stack(embeddings), axis=0)
    n = float(np.linalg.norm(m))
    if not math.isfinite(n) or n < 1e-6:
        return np.asarray(embeddings[0], dtype=np.float64)
    return np.asarray(m / n, dtype=np.float64)


def _groups(
    tracks: list[Track],
    names: dict[int, str],
    *,
    kind_of: Callable[[Track], str],
    link: bool,
    threshold: float | None,
) -> list[_Group]:
    """Named tracks grouped by name; unnamed identity tracks joined (greedily, in order of
    appearance) to the most similar earlier group they never overlap in time, at or above
    the encoder's threshold; every other track is a group of its own."""
    groups: list[_Group] = []
    by_name: dict[str, _Group] = {}
    for tr in tracks:
        name = names.get(tr.number)
        kind = kind_of(tr)
        emb = mean_identity(tr.embeddings()) if kind == "generator" else None
        if name is not None:
            g = by_name.get(name)
            if g is None:
                g = _Group(len(groups) + 1, [], name=name, kind=kind)
                groups.append(g)
                by_name[name] = g
            g.tracks.append(tr)
            if kind == "generator":
                g.kind = "generator"
            continue
        if link and threshold is not None and emb is not None:
            best: tuple[float, _Group] | None = None
            mine = set(tr.frames)
            for g in groups:
                ge = mean_identity([e for t in g.tracks for e in t.embeddings()])
                if ge is None or g.kind != "generator" or g.frames() & mine:
                    continue
                sim = float(ge @ emb)
                if sim >= threshold and (best is None or sim > best[0]):
                    best = (sim, g)
            if best is not None:
                best[1].tracks.append(tr)
                best[1].linked = True
                continue
        groups.append(_Group(len(groups) + 1, [tr], kind=kind))
    for g in groups:
        if g.kind == "generator":
            g.embedding = mean_identity([e for t in g.tracks for e in t.embeddings()])
            if g.embedding is None:  # a named group of uncertain tracks only
                g.kind = "fallback"
    return groups


# ----------------------------------------------------------------------------- writing


def _video_codec(suffix: str) -> str:
    return "libvpx-vp9" if suffix == ".webm" else "libx264"


class _Writer:
    """The output file: one video stream encoded from the rendered frames with the input's
    time base and timestamps, audio stream-copied (or none), no metadata."""

    def __init__(self, av: Any, dest: Path, src: Any, size: tuple[int, int], audio: AudioMode):
        self.av = av
        v = src.streams.video[0]
        fmt = {".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm"}.get(
            dest.suffix.lower()
        )
        self.out = av.open(str(dest), mode="w", format=fmt)
        self.out.metadata.clear()
        codec = _video_codec(dest.suffix.lower())
        rate = v.average_rate or v.guessed_rate or 25
        s = self.out.add_stream(codec, rate=rate)
        h, w = size
        s.width, s.height = w, h
        odd = (w % 2) or (h % 2)
        s.pix_fmt = "yuv444p" if (odd and codec == "libx264") else "yuv420p"
        s.time_base = v.time_base
        s.codec_context.time_base = v.time_base
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "veryfast"}
        else:
            s.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        s.metadata.clear()
        self.video = s
        self.audio: dict[int, Any] = {}
        if audio == "keep":
            for a in src.streams.audio:
                try:
                    o = self.out.add_stream_from_template(a)
                except (ValueError, av.error.FFmpegError) as err:
                    raise InputError(
                        f"cannot copy the {a.codec_context.name} audio into {dest.suffix}: "
                        f"{err}; write the same container type or drop the audio"
                    ) from err
                o.metadata.clear()
                self.audio[a.index] = o
        self.tb = v.time_base

    def frame(self, rgb: np.ndarray, pts: int) -> None:
        f = self.av.VideoFrame.from_ndarray(rgb, format="rgb24")
        f.pts = pts
        f.time_base = self.tb
        self.out.mux(self.video.encode(f))

    def packet(self, packet: Any) -> None:
        o = self.audio.get(packet.stream.index)
        if o is None or packet.dts is None:
            return
        packet.stream = o
        self.out.mux(packet)

    def close(self) -> None:
        self.out.mux(self.video.encode(None))
        self.out.close()


# ----------------------------------------------------------------------------- rendering


def _mask(img: np.ndarray, region: tuple[int, int, int, int]) -> None:
    from .pipeline import MASK_VALUE

    x0, y0, x1, y1 = region
    img[y0:y1, x0:x1] = MASK_VALUE


def _region(box: tuple[float, ...], lm: np.ndarray, frame: np.ndarray) -> Any:
    from .face import Face
    from .pipeline import _face_region

    face = Face(frame, (box[0], box[1], box[2], box[3]), lm)
    return face, _face_region(face, frame.shape)


_Box = tuple[int, int, int, int]


class _Renderer:
    def __init__(self, anonymizer: Anonymizer, groups: list[_Group]) -> None:
        self.anon = anonymizer
        self.by_track: dict[int, _Group] = {t.number: g for g in groups for t in g.tracks}
        self.fallback_frames: dict[int, int] = {}
        self.masked_frames: dict[int, int] = {}
        self.channels: dict[int, dict[str, list[str]]] = {}
        self.timings: dict[str, float] = {}
        # head protection, per track: frames released / painted grey, first frame's head box
        self.head_frames: dict[int, dict[str, int]] = {}
        self.head_boxes: dict[int, tuple[int, _Box]] = {}

    def _fallback(
        self, img: np.ndarray, g: _Group, tr: Track, region: _Box
    ) -> tuple[np.ndarray, str]:
        """The group's DP-Pix fallback (charged once per group, on first need) or a mask."""
        from .ledger import BudgetExceeded

        anon = self.anon
        if anon.fallback == "mask" or g.fallback_refused is not None:
            return self._masked(img, tr, region)
        if g.fallback_event is None:
            try:
                g.fallback_event = anon.charge_release(g.subject, anon.fallback_mechanism(region))
            except (BudgetExceeded, KeyError) as err:
                g.fallback_refused = anon._refusal(err)
                return self._masked(img, tr, region)
        x0, y0, x1, y1 = region
        if x1 <= x0 or y1 <= y0:
            return img, "none"
        self.fallback_frames[tr.number] = self.fallback_frames.get(tr.number, 0) + 1
        return np.asarray(anon.fallback_mechanism(region)(img, region)), "dp-fallback"

    def _masked(self, img: np.ndarray, tr: Track, region: _Box) -> tuple[np.ndarray, str]:
        self.masked_frames[tr.number] = self.masked_frames.get(tr.number, 0) + 1
        _mask(img, region)
        return img, "mask"

    def _head_decision(self, g: _Group, box: _Box) -> str:
        """The group's head protection, decided at its first need and kept for every frame:
        grey for ``head="mask"`` or a group whose own release was refused (nothing charged),
        else ONE DP-Pix head release charged to the group's unit (grey when refused)."""
        from .ledger import BudgetExceeded

        if g.head is not None:
            return g.head
        anon = self.anon
        own_refused = g.refused is not None or (
            g.kind == "fallback" and g.fallback_refused is not None
        )
        if anon.head == "mask":
            g.head, g.head_reason = "mask", "head='mask'"
        elif own_refused:
            g.head, g.head_reason = "mask", "the person's own release was refused"
        else:
            try:
                g.head_event = anon.charge_release(g.subject, anon.head_mechanism(box))
                g.head = "dp-pix"
            except (BudgetExceeded, KeyError) as err:
                g.head, g.head_refused = "mask", True
                g.head_reason = f"head release refused: {anon._refusal(err)}"
        return g.head

    def _heads(
        self,
        rgb: np.ndarray,
        index: int,
        img: np.ndarray,
        drawn: list[tuple[Track, tuple[float, ...], Any]],
    ) -> tuple[np.ndarray, list[tuple[int, _Box, str]]]:
        """Head protection on one frame (:mod:`dpface.head`): each drawn face's head box is
        released from the ORIGINAL frame ``rgb`` with a fresh DP-Pix draw (the group's one
        head release) or painted grey, in face order; then each face's own protection from
        the first pass ``img`` goes back on top (a generated face through its soft mask)."""
        from .head import (
            FaceLayer,
            ProtectedRegion,
            grey_outside,
            head_box,
            published_head,
        )
        from .pipeline import MASK_VALUE

        anon = self.anon
        tops: list[FaceLayer | ProtectedRegion] = []
        for _, _, top in drawn:
            if isinstance(top, FaceLayer):
                tops.append(top)
            else:
                x0, y0, x1, y1 = top
                tops.append(ProtectedRegion(top, img[y0:y1, x0:x1].copy()))
        canvas = img.copy()
        heads: list[tuple[int, _Box, str]] = []
        covered = [head_box(b, rgb.shape) for _, b, _ in drawn] + [t.region for t in tops]
        grey = grey_outside(rgb, covered)
        for tr, box_f, _ in drawn:
            box = head_box(box_f, rgb.shape)
            x0, y0, x1, y1 = box
            if x1 <= x0 or y1 <= y0:
                continue
            g = self.by_track[tr.number]
            how = self._head_decision(g, box)
            if how == "dp-pix":
                mech = anon.head_mechanism(box)
                released = np.asarray(mech(rgb, box))[y0:y1, x0:x1]
                canvas[y0:y1, x0:x1] = published_head(released, mech.block, grey)
            else:
                canvas[y0:y1, x0:x1] = MASK_VALUE
            counts = self.head_frames.setdefault(tr.number, {"dp-pix": 0, "mask": 0})
            counts[how] += 1
            self.head_boxes.setdefault(tr.number, (index, box))
            heads.append((tr.number, box, how))
        for top in tops:
            top.over(canvas)
        return canvas, heads

    def render(
        self, rgb: np.ndarray, index: int, tracks: list[Track]
    ) -> tuple[np.ndarray, list[tuple[int, _Box, str]], list[tuple[int, _Box, str]]]:
        """One frame: every face's own protection, then (with head protection) the heads.
        Returns (frame, [(track, face region, how)], [(track, head box, how)])."""
        from .head import FaceLayer

        anon = self.anon
        img = rgb.copy()
        done: list[tuple[int, _Box, str]] = []
        # what head protection puts back on top of each drawn face: a FaceLayer, or the
        # region whose first-pass pixels go back unchanged
        drawn: list[tuple[Track, tuple[float, ...], FaceLayer | _Box]] = []
        for tr in tracks:
            tf = tr.frames.get(index)
            if tf is None:
                continue
            g = self.by_track[tr.number]
            face, region = _region(tf.box, tf.landmarks, rgb)
            x0, y0, x1, y1 = region
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue  # outside the picture
            t = time.perf_counter()
            top: FaceLayer | _Box = region
            if g.refused is not None:
                img, how = self._masked(img, tr, region)
            elif g.kind == "mechanism":
                mech: Any = anon.mechanism  # an image mechanism (the registry's "region")
                img, how = np.asarray(mech(img, region)), "mechanism"
            elif g.kind == "fallback" or not tf.landmarks_ok:
                img, how = self._fallback(img, g, tr, region)
            else:
                assert anon.generator is not None and g.identity is not None
                res = anon.generator.generate(img, face, g.identity, g.channel)
                if res.replaced:
                    img, how = res.image, "generator"
                    if tr.number not in self.channels:
                        self.channels[tr.number] = res.channels.as_dict()
                    if res.region is not None:
                        top = res.region
                        if res.alpha is not None and res.layer is not None:
                            top = FaceLayer(res.region, res.alpha, res.layer)
                else:
                    img, how = self._fallback(img, g, tr, region)
            _tick(self.timings, "generate" if how == "generator" else "privatise", t)
            done.append((tr.number, region, how))
            if how != "none":
                drawn.append((tr, tf.box, top))
        if anon.head == "keep" or not drawn:
            return img, done, []
        t = time.perf_counter()
        img, heads = self._heads(rgb, index, img, drawn)
        _tick(self.timings, "privatise", t)
        return img, done, heads


# ----------------------------------------------------------------------------- main entry


def anonymize_video(
    anonymizer: Anonymizer,
    source: str | Path,
    dest: str | Path,
    *,
    audio: AudioMode = "keep",
    detect_every: int = 1,
    max_gap: int | None = None,
    pad: int = 1,
    subject: str | None = None,
    subjects: Mapping[int, str] | None = None,
    link_tracks: bool = True,
    name: str | None = None,
    progress: Progress | None = None,
    detect: Callable[[np.ndarray], Any] | None = None,
) -> VideoResult:
    """De-identify every face of the video ``source`` into ``dest`` (same container type as
    ``dest``'s suffix; use the input's suffix so audio can be copied).

    ``audio``: ``"keep"`` copies the audio streams unchanged (voices are NOT protected; the
    receipt says so) or ``"drop"``. ``detect_every``: run the detector on every k-th frame
    (the frames between are protected by interpolation). ``max_gap``: frames a track survives
    without a detection (default: half a second). ``pad``: extra frames protected by
    extrapolation before a track's first and after its last detection. ``subject``: the
    video's one person (its only track group with a confident face); ``subjects``: names by
    track number (1-based, by first appearance; see :func:`find_tracks`). ``link_tracks``:
    join tracks of the same unnamed person (leaving and re-entering) by raw embedding
    similarity on the trusted side, so they share one release. ``name``: what the receipt
    calls the input (default: the file name). ``progress(stage, done, expected)`` is called
    per frame (stages "analyse" and "render"). ``detect``: replace the detector (tests).

    Nothing is charged before the whole video was analysed; a video that cannot be read
    returns a result with ``error`` and charges nothing. A refused budget masks that
    person's face on every frame."""
    from .detect import DEFAULT_DETECTOR
    from .ledger import BudgetExceeded, normalize_subject

    src = Path(source)
    out = Path(dest)
    label = name if name is not None else src.name
    try:
        av = _av()
    except InputError as err:  # not installed: this video is a problem, not a crash
        return _failed(anonymizer, label, str(err), {})
    if audio not in ("keep", "drop"):
        raise ValueError("audio must be 'keep' or 'drop'")
    _check_every(detect_every)
    if subject is not None and subjects is not None:
        raise ValueError("pass subject= or subjects=, not both")
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"dest must end in one of {', '.join(VIDEO_SUFFIXES)}")
    if src.exists() and out.exists() and os.path.samefile(src, out):
        raise ValueError("dest is the source video")
    names: dict[int, str] = {}
    if subjects is not None:
        for k, v in subjects.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError("subjects= maps track numbers (1, 2, ...) to names")
            names[k] = normalize_subject(v)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        info = probe(src)
        gap = max_gap if max_gap is not None else _default_gap(info.fps)
        if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
            raise ValueError("max_gap must be an integer >= 0")
        embed = anonymizer.consumes == "embedding" or anonymizer.templates is not None
        ana = _analyse(
            anonymizer,
            src,
            detector=anonymizer.detector or DEFAULT_DETECTOR,
            detect_every=detect_every,
            max_gap=gap,
            pad=pad,
            embed=embed,
            progress=progress,
            detect=detect,
            timings=timings,
        )
    except InputError as err:
        return _failed(anonymizer, label, str(err), timings, src)
    tracks = ana.tracks

    def kind_of(tr: Track) -> str:
        if anonymizer.consumes == "region":
            return "mechanism"
        return "generator" if tr.embeddings() else "fallback"

    threshold = None
    if link_tracks and anonymizer.consumes == "embedding":
        threshold = float(anonymizer._encoder_for().threshold)
    if subject is not None:
        # the video's one person: its only group of tracks with a confident face
        plain = _groups(tracks, {}, kind_of=kind_of, link=link_tracks, threshold=threshold)
        sure = [g for g in plain if not all(_uncertain(t) for t in g.tracks)]
        if len(sure) != 1:
            return _failed(
                anonymizer,
                label,
                f"subject={subject!r} names one person but the video has {len(sure)} "
                "person-tracks with a confident face: pass subjects={track: name} instead "
                "(see dpface.video.find_tracks); nothing was released",
                timings,
            )
        names = {t.number: normalize_subject(subject) for t in sure[0].tracks}
    beyond = [n for n in names if n > len(tracks)]
    if beyond:
        return _failed(
            anonymizer,
            label,
            f"subjects= names track {beyond[0]} but only {len(tracks)} track(s) were found; "
            "nothing was released",
            timings,
        )
    groups = _groups(tracks, names, kind_of=kind_of, link=link_tracks, threshold=threshold)

    # ---- units and releases (the ledger is touched from here on)
    t = time.perf_counter()
    video_unit = anonymizer.ledger.unit_digest(b"video:" + ana.digest)
    enc: Any = None
    templates = anonymizer.templates
    if templates is not None and any(g.embedding is not None for g in groups):
        enc = anonymizer._encoder_for()
    for g in groups:
        first = g.tracks[0]
        if g.name is not None:
            g.subject, g.shown = g.name, anonymizer.subject_shown(g.name)
            if templates is not None and enc is not None and g.embedding is not None:
                templates.enroll(g.name, enc.name, g.embedding)
            continue
        if templates is not None and enc is not None and g.embedding is not None:
            hit = templates.match(enc.name, g.embedding, enc.threshold)
            if hit is not None:
                from .pipeline import LINKED_UNIT

                g.subject, g.shown, g.enrolled_link = hit[0], LINKED_UNIT, True
                continue
        from .pipeline import _int_box

        box = _int_box(first.detections[0].box, (*ana.size, 3))
        if box[2] <= box[0] or box[3] <= box[1]:
            box = (box[0], box[1], box[0] + 1, box[1] + 1)
        g.subject = anonymizer.ledger.face_unit(video_unit, box)
        g.shown = g.subject
    for g in groups:
        try:
            if g.kind == "generator":
                assert g.embedding is not None
                g.identity, g.event, g.how = anonymizer.release_identity(g.subject, g.embedding)
                if anonymizer.steering is not None:
                    best = max((tr.best() for tr in g.tracks), key=lambda d: d.score)
                    face = _face_for_steering(src, ana, best)
                    steered = anonymizer.steering.steer(
                        subject=g.subject,
                        embedding=g.embedding,
                        face=face,
                        ledger=anonymizer.ledger,
                    )
                    g.channel = steered.channel
                    g.steer_note = steered.refused or steered.note
            elif g.kind == "mechanism":
                g.event = anonymizer.charge_release(g.subject)
        except (BudgetExceeded, KeyError) as err:
            g.refused = anonymizer._refusal(err)
    timings["charge"] = timings.get("charge", 0.0) + time.perf_counter() - t

    # ---- render (second decode)
    renderer = _Renderer(anonymizer, groups)
    regions: list[list[tuple[int, tuple[int, int, int, int], str]]] = []
    heads: list[list[tuple[int, tuple[int, int, int, int], str]]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.part{os.getpid()}{out.suffix}")
    written_pts: list[int] = []
    try:
        with _open(src) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            writer = _Writer(av, tmp, c, ana.size, audio)
            clock = _Clock(v)
            streams = [v, *(c.streams.audio if audio == "keep" else [])]
            index = 0
            by_frame: dict[int, list[Track]] = {}
            for tr in tracks:
                for f in tr.frames:
                    by_frame.setdefault(f, []).append(tr)
            for packet, frame in _frames(c, c.demux(*streams)):
                if frame is None:
                    writer.packet(packet)
                    continue
                tt = time.perf_counter()
                rgb = _upright(frame, ana.rotation)
                p = clock.pts(frame)
                tt = _tick(timings, "decode", tt)
                img, done, head = renderer.render(rgb, index, by_frame.get(index, []))
                tt = time.perf_counter()
                writer.frame(img, p)
                _tick(timings, "encode", tt)
                regions.append(done)
                heads.append(head)
                written_pts.append(p)
                index += 1
                if progress is not None:
                    progress("render", index, len(ana.times))
            tt = time.perf_counter()
            writer.close()
            _tick(timings, "encode", tt)
        if index != len(ana.times):
            raise InputError(f"the second decode gave {index} frames, the first {len(ana.times)}")
        os.replace(tmp, out)
    except (InputError, av.error.FFmpegError, OSError) as err:
        tmp.unlink(missing_ok=True)
        msg = str(err) if isinstance(err, InputError) else f"could not write the video: {err}"
        res = _failed(anonymizer, label, msg, timings, src)
        res.receipt["charged_before_failure"] = True
        return res
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stage, sec in renderer.timings.items():
        timings[stage] = timings.get(stage, 0.0) + sec
    for stage, sec in anonymizer._timings.items():
        if stage in ("charge", "privatise"):
            timings[stage] = timings.get(stage, 0.0) + sec
    timings["total"] = time.perf_counter() - t0
    records = _records(anonymizer, groups, renderer)
    predicted = sum(
        any(tr_frame_source(tracks, n, i) != "detected" for n, _, _ in r)
        for i, r in enumerate(regions)
    )
    receipt = _receipt(
        anonymizer, label, info, ana, records, groups, audio, detect_every, gap, predicted, regions
    )
    return VideoResult(
        label,
        out,
        records,
        receipt,
        frames=len(regions),
        timings=timings,
        regions=regions,
        heads=heads if anonymizer.head != "keep" else [],
        predicted_frames=predicted,
        pts=written_pts,
    )


def tr_frame_source(tracks: list[Track], number: int, index: int) -> str:
    return tracks[number - 1].frames[index].source


def _uncertain(tr: Track) -> bool:
    return all(d.uncertain for d in tr.detections)


def _face_for_steering(src: Path, ana: _Analysis, det: Detection) -> Any:
    """The detection as a ``dpface.face.Face`` on its frame (decoded again)."""
    from .face import Face

    with _open(src) as c:
        for i, (_, frame) in enumerate(_frames(c)):
            if i == det.frame:
                rgb = _upright(frame, ana.rotation)
                return Face(
                    rgb,
                    det.box,
                    det.landmarks,
                    score=det.score,
                    detector=det.detector or "centerface",
                    uncertain=det.uncertain,
                    landmarks_ok=det.landmarks_ok,
                )
    raise InputError("the frame of a track's best detection could not be decoded again")


def _records(anon: Anonymizer, groups: list[_Group], r: _Renderer) -> list[TrackRecord]:
    out: list[TrackRecord] = []
    for g in groups:
        spent, left = anon.spent_by(g.subject)
        for tr in g.tracks:
            fb = r.fallback_frames.get(tr.number, 0)
            masked = r.masked_frames.get(tr.number, 0)
            if g.refused is not None:
                status, protection = "masked", "mask"
                reason = f"budget refused: {g.refused}"
            elif g.kind == "mechanism":
                status, protection, reason = "pixelized", "mechanism", None
            elif g.kind == "fallback":
                status = "pixelized" if fb else "masked"
                protection = "dp-fallback" if fb else "mask"
                reason = (
                    "the detector was unsure this is a face on every frame"
                    if _uncertain(tr)
                    else "no frame with reliable landmarks for the generator"
                )
                if g.fallback_refused:
                    reason += f"; its DP fallback was refused: {g.fallback_refused}"
            else:
                status, protection, reason = "replaced", "generator", None
                if fb or masked:
                    reason = (
                        f"{fb + masked} frame(s) the generator could not take were protected "
                        "by the track's DP fallback" + (" (masked: refused)" if masked else "")
                    )
            channels = _channels(anon, g, r.channels.get(tr.number))
            head = _head_record(anon, g, r, tr)
            if head is not None:
                channels = _head_channels(channels, r.head_boxes.get(tr.number), head["how"])
            out.append(
                TrackRecord(
                    track=tr.number,
                    group=g.number,
                    first_frame=tr.first,
                    last_frame=tr.last,
                    frames=len(tr.frames),
                    detected=tr.count("detected"),
                    interpolated=tr.count("interpolated"),
                    extrapolated=tr.count("extrapolated"),
                    subject=g.subject,
                    unit=g.shown,
                    status=status,
                    protection=protection,
                    identity=g.how if g.kind == "generator" and g.refused is None else "none",
                    ledger_event=g.event,
                    fallback_event=g.fallback_event,
                    fallback_frames=fb,
                    masked_frames=masked,
                    refused=g.refused is not None,
                    reason=reason,
                    spent=spent,
                    remaining_epsilon=left,
                    linked=g.linked,
                    named=g.name is not None,
                    enrolled_link=g.enrolled_link,
                    uncertain=_uncertain(tr),
                    channels=channels,
                    head=head,
                )
            )
    out.sort(key=lambda rec: rec.track)
    return out


def _head_record(anon: Anonymizer, g: _Group, r: _Renderer, tr: Track) -> dict[str, Any] | None:
    """A track's head protection for its record (None with ``head="keep"``): the group's
    one decision, its head release, and this track's frames released / painted grey."""
    if anon.head == "keep":
        return None
    from .head import HEAD_PIXELS

    counts = r.head_frames.get(tr.number, {"dp-pix": 0, "mask": 0})
    first = r.head_boxes.get(tr.number)
    info: dict[str, Any] = {
        "protection": g.head or "none",
        "ledger_event": g.head_event,
        "refused": g.head_refused,
        "reason": g.head_reason,
        "frames_released": counts["dp-pix"],
        "frames_masked": counts["mask"],
        "first_frame": None if first is None else first[0],
        "first_box": None if first is None else list(first[1]),
    }
    if g.head == "dp-pix":
        info.update(epsilon=anon.head_epsilon, cells=anon.head_cells, m=HEAD_PIXELS)
        info["how"] = (
            f"DP-Pix from each frame's own pixels, fresh noise on every frame, ONE release "
            f"for the whole track (charged once, ledger event {g.head_event}): "
            f"{anon.head_epsilon:g}-DP for any {HEAD_PIXELS} pixel(s) in total over all the "
            f"frames of the track ({anon.head_cells} cells across the head box on each frame, "
            "each frame's noise calibrated to its own cell size; cells drawn smoothly between "
            "their centres, post-processing)"
        )
    elif g.head == "mask":
        info["how"] = (
            f"painted flat grey on every frame ({g.head_reason})"
            if g.head_refused
            else f"painted flat grey on every frame ({g.head_reason}; nothing released)"
        )
    else:
        info["reason"] = "no frame of the track was drawn"
        info["how"] = "none (no frame of the track was drawn)"
    return info


def _head_channels(
    channels: dict[str, list[str]], first: tuple[int, tuple[int, int, int, int]] | None, how: str
) -> dict[str, list[str]]:
    """A track's channel record with its head protected (:func:`dpface.head.head_channels`),
    worded for a box that follows the face from frame to frame."""
    from .head import head_channels

    if first is None:
        return {**channels, "notes": [*channels.get("notes", []), f"head protection: {how}"]}
    frame, box = first
    out = head_channels(channels, box, how)
    x0, y0, x1, y1 = box
    where = f"{x1 - x0}x{y1 - y0} px at ({x0}, {y0})"
    moving = f"on every frame, following the face; {where} on frame {frame}"
    out["covered"] = [
        c.replace(where, moving, 1) if c.startswith("the head box") else c for c in out["covered"]
    ]
    return out


def _channels(
    anon: Anonymizer, g: _Group, generated: dict[str, list[str]] | None
) -> dict[str, list[str]]:
    if g.refused is not None:
        ch: dict[str, list[str]] = {"covered": [], "uncovered": [], "notes": ["masked"]}
    elif g.kind == "generator" and generated is not None:
        ch = {k: list(v) for k, v in generated.items()}
    elif (
        g.kind == "generator" and anon.generator is not None and hasattr(anon.generator, "channels")
    ):
        ch = anon.generator.channels(None).as_dict()
    else:
        ch = {
            "covered": [
                "pixels of the track's face regions over all its frames (m pixels in total)"
            ],
            "uncovered": ["everything outside the face regions"],
            "notes": [],
        }
    ch.setdefault("notes", [])
    ch["uncovered"] = [*ch["uncovered"], TRACKING_UNCOVERED]
    if g.linked:
        ch["uncovered"].append(VIDEO_LINK_UNCOVERED)
    if g.enrolled_link:
        from .pipeline import LINKING_UNCOVERED

        ch["uncovered"].append(LINKING_UNCOVERED)
    if g.steer_note:
        ch["notes"].append(g.steer_note)
    if g.kind == "generator" and g.refused is None:
        ch["notes"].append(
            "one privatised identity for the whole track (normalised mean of its raw "
            "embeddings), released once and reused on every frame (post-processing)"
        )
    return ch


def _receipt(
    anon: Anonymizer,
    label: str,
    info: VideoInfo,
    ana: _Analysis,
    records: list[TrackRecord],
    groups: list[_Group],
    audio: AudioMode,
    detect_every: int,
    gap: int,
    predicted: int,
    regions: list[list[tuple[int, tuple[int, int, int, int], str]]],
) -> dict[str, Any]:
    from .pipeline import _version

    gen = anon.generator
    n = len(ana.times)
    duration = ana.times[-1] - ana.times[0] if n > 1 else 0.0
    steps = np.diff(np.asarray(ana.pts)) if n > 1 else np.zeros(0)
    rotation = (
        f"the input asks players to turn it by {ana.rotation} degrees counter-clockwise: frames "
        "were decoded upright and written upright, without a rotation flag"
        if ana.rotation
        else "none"
    )
    not_protected = [
        "faces the detector missed on every frame of their appearance (see detection)",
        "everything outside the protected face regions"
        if anon.head == "keep"
        else "everything outside the faces' head boxes and protected face regions",
        TRACKING_UNCOVERED,
        "different videos (or photos) of an unnamed person: each video's tracks are their own "
        "privacy units, so their releases are not composed (name the person to join them)",
        "container and stream metadata (GPS location, device, creation time), subtitles, data "
        "streams and cover pictures are not copied",
    ]
    if audio == "keep" and info.audio:
        not_protected.insert(2, AUDIO_UNCOVERED)
    if any(g.linked for g in groups):
        not_protected.append(VIDEO_LINK_UNCOVERED)
    not_protected = [*anon.release_caveats(), *not_protected]
    with_faces = sum(1 for r in regions if r)
    return {
        "schema": VIDEO_RECEIPT_SCHEMA,
        "source": label,
        "time": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
        "dpface_version": _version(),
        "seeded": anon.seeded,
        "mechanism": anon.mechanism_block(),
        "generator": None if gen is None else {"name": gen.name, "encoder": gen.encoder},
        "pseudonym": anon.pseudonym,
        "head": anon.head_settings(),
        "ledger": {"run_id": anon.ledger.run_id, "composition": anon.ledger.composition},
        "video": {
            "frames": n,
            "fps": round(info.fps, 4),
            "duration_s": round(duration, 6),
            "time_base": info.time_base,
            "variable_frame_rate": bool(len(steps) and steps.min() != steps.max()),
            "width": ana.size[1],
            "height": ana.size[0],
            "rotation": rotation,
            "audio": (
                "none in the input"
                if not info.audio
                else "kept (stream copy): voices and sounds are NOT protected"
                if audio == "keep"
                else "dropped"
            ),
            "streams_dropped": list(info.other_streams),
            "metadata": "not copied (container and stream metadata are dropped)",
        },
        "detection": {
            "detector": anon.detector,
            "detect_every": detect_every,
            "frames_searched": ana.searched,
            "max_gap_frames": gap,
            "min_face_px": ana.min_face_px,
            "frames_with_faces": with_faces,
            "frames_protected_only_by_prediction": predicted,
            "frame_errors": ana.detection_errors,
            "may_have_missed": (
                "faces the detector does not find on any frame of their appearance "
                "(smaller than about "
                f"{ana.min_face_px} px, strongly turned or covered); a face missed on some "
                "frames of a track is protected there by the predicted box"
            ),
        },
        "tracks": [r.as_receipt() for r in records],
        "releases": sum(1 for g in groups if g.event is not None)
        + sum(1 for g in groups if g.fallback_event is not None)
        + sum(1 for g in groups if g.head_event is not None),
        "not_protected": not_protected,
        "privacy_units": (
            "one release per person-track: named tracks are charged to the named subject; an "
            "unnamed track is its own privacy unit keyed by a keyed digest of this video's "
            "decoded frames and the track's first box (the same video released again charges "
            "the same unit); tracks linked within the video share their first track's unit"
        ),
    }


def _failed(
    anon: Anonymizer, label: str, error: str, timings: dict[str, float], src: Path | None = None
) -> VideoResult:
    from ._version import __version__ as _v

    if src is not None:  # receipts carry no path: FFmpeg's messages name the file
        for path in sorted({str(src), str(src.absolute()), os.path.realpath(src)}, key=len)[::-1]:
            error = error.replace(path, label)
    receipt = {
        "schema": VIDEO_RECEIPT_SCHEMA,
        "source": label,
        "error": error,
        "dpface_version": _v,
        "seeded": anon.seeded,
        "mechanism": anon.mechanism_block(),
    }
    return VideoResult(label, None, [], receipt, error=error, timings=timings)
