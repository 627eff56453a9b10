"""Video benchmark (issue 18): frames/s of ``dpface`` on a short clip built from the bundled
sample faces, against deface on the same clip in the same run, and frames with an
unprotected face.

    .venv/bin/python scripts/bench_video.py                # writes docs/results/video.md
    .venv/bin/python scripts/bench_video.py --quick        # a shorter clip, no file written

The clip is made here from the sample photos (nothing is downloaded): two real faces (Obama,
Biden) moving, zooming and crossing over a synthetic background, with a frame where one face
is covered, encoded with FFmpeg through PyAV; the true face box of every frame is known. A face
counts as *unprotected* in a frame when the output was left (almost) unchanged inside its true
box: a mean absolute difference below ``PROTECTED_MAD`` grey levels (re-encoding alone stays
below 2). Whether a replaced face can still be recognised is measured separately
(``consistency``: re-identification by the encoder). deface is run as its own command
(``deface clip.mp4 -o out.mp4``), timed from process start to output written; dpface is timed
inside one process (models loaded before the clock starts) and as the whole command.

The clip builders (:func:`make_clip`, :func:`two_people`) are also used by
tests/integration/test_video.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROTECTED_MAD = 4.0
Box = tuple[int, int, int, int]
# the default detector's box of the face in these sample photos (measured once; saves loading
# the detector for clips whose faces are given)
FACE_BOXES = {"fr-obama.jpg": (367, 63, 620, 423), "fr-biden.jpg": (413, 156, 731, 588)}


@dataclass(frozen=True, eq=False)
class Sprite:
    """A head cut from a sample photo: pixels and the face box inside them."""

    rgb: np.ndarray
    box: tuple[float, float, float, float]


@functools.cache
def sprite(name: str, grow: float = 0.6) -> Sprite:
    """The sample photo's most confident face, cut with ``grow`` times its size around it."""
    from dpface import assets_dir
    from dpface.detect import detect_array
    from dpface.models.images import load_rgb

    img = load_rgb(assets_dir() / "samples" / name)
    if name in FACE_BOXES:
        x0, y0, x1, y1 = FACE_BOXES[name]
    else:
        x0, y0, x1, y1 = max(detect_array(img).faces, key=lambda f: f.score).box
    w, h = x1 - x0, y1 - y0
    cx0, cy0 = max(0, int(x0 - grow * w)), max(0, int(y0 - grow * h))
    cx1, cy1 = min(img.shape[1], int(x1 + grow * w)), min(img.shape[0], int(y1 + grow * h))
    return Sprite(img[cy0:cy1, cx0:cx1].copy(), (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))


def background(width: int, height: int, seed: int = 7) -> np.ndarray:
    """A face-free backdrop: colour gradients, a few rectangles and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack(
        [
            80 + 60 * xx / max(width - 1, 1),
            110 + 40 * yy / max(height - 1, 1),
            140 - 50 * xx / max(width - 1, 1),
        ],
        axis=-1,
    )
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3))
        img[y : y + h, x : x + w] = rng.integers(40, 220, 3)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# A person's path: frame index -> (face centre x, face centre y, face width px) or None
Path_ = Callable[[int], tuple[float, float, float] | None]


def place(canvas: np.ndarray, sp: Sprite, cx: float, cy: float, width: float) -> Box:
    """Paste the sprite scaled so its face is ``width`` px wide and centred at (cx, cy);
    the face's true box in the canvas (clipped)."""
    import cv2

    fx0, fy0, fx1, fy1 = sp.box
    s = width / (fx1 - fx0)
    small = cv2.resize(
        sp.rgb,
        (max(1, round(sp.rgb.shape[1] * s)), max(1, round(sp.rgb.shape[0] * s))),
        interpolation=cv2.INTER_AREA,
    )
    fcx, fcy = (fx0 + fx1) / 2 * s, (fy0 + fy1) / 2 * s
    ox, oy = round(cx - fcx), round(cy - fcy)
    h, w = canvas.shape[:2]
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    dx1 = min(w, ox + small.shape[1])
    dy1 = min(h, oy + small.shape[0])
    if dx1 > dx0 and dy1 > dy0:
        canvas[dy0:dy1, dx0:dx1] = small[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    box = (ox + fx0 * s, oy + fy0 * s, ox + fx1 * s, oy + fy1 * s)
    return (
        max(0, round(box[0])),
        max(0, round(box[1])),
        min(w, round(box[2])),
        min(h, round(box[3])),
    )


@dataclass
class Clip:
    path: Path
    frames: int
    boxes: list[list[Box]]  # true face boxes per frame (upright), per person in order
    visible: list[list[bool]]  # face visible (not covered) per frame, per person
    pts: list[int]
    time_base: Fraction


def make_clip(
    dest: Path,
    *,
    frames: int,
    size: tuple[int, int] = (320, 240),
    people: Sequence[tuple[Sprite, Path_]] = (),
    fps: int = 10,
    vfr: bool = False,
    audio: bool = False,
    metadata: dict[str, str] | None = None,
    rotation: int = 0,
    cover: dict[int, int] | None = None,
    blur: Sequence[int] = (),
) -> Clip:
    """Encode a clip (H.264 in mp4/mov/mkv/avi, VP9 in webm) with FFmpeg through PyAV.

    ``people``: sprites and their paths; ``vfr``: irregular frame durations (pts in 1/1000 s);
    ``audio``: a 440 Hz tone (AAC, or Opus in webm/mkv); ``metadata``: container tags;
    ``rotation``: stored turned, with a display matrix asking players to turn it back by
    ``rotation`` degrees counter-clockwise (the upright picture is what ``boxes`` describe);
    ``cover``: {frame: person} whose face is covered by a grey card in that frame;
    ``blur``: frames with horizontal motion blur."""
    import av
    import cv2

    width, height = size
    bg = background(width, height)
    suffix = dest.suffix.lower()
    out = av.open(str(dest), mode="w")
    if metadata:
        out.metadata.update(metadata)
    codec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    v = out.add_stream(codec, rate=fps)
    sw, sh = (height, width) if rotation % 180 else (width, height)
    v.width, v.height = sw, sh
    v.pix_fmt = "yuv420p"
    tb = Fraction(1, 1000) if vfr else Fraction(1, fps)
    v.time_base = tb
    v.codec_context.time_base = tb
    v.options = {"crf": "16", "preset": "veryfast"} if codec == "libx264" else {"crf": "20"}
    if rotation:
        v.set_display_rotation(rotation)
    a = None
    if audio:
        acodec = "libopus" if suffix in (".webm", ".mkv") else "aac"
        a = out.add_stream(acodec, rate=48000)
        a.layout = "mono"
    boxes: list[list[Box]] = []
    visible: list[list[bool]] = []
    pts: list[int] = []
    p = 0
    rng = np.random.default_rng(3)
    for i in range(frames):
        img = bg.copy()
        row, vis = [], []
        for k, (sp, path) in enumerate(people):
            where = path(i)
            if where is None:
                row.append((0, 0, 0, 0))
                vis.append(False)
                continue
            box = place(img, sp, *where)
            covered = cover is not None and cover.get(i) == k
            if covered:
                x0, y0, x1, y1 = box
                img[y0:y1, x0:x1] = 120
            row.append(box)
            vis.append(not covered and box[2] > box[0] and box[3] > box[1])
        if i in blur:
            kernel = np.zeros((1, 15), np.float32)
            kernel[0, :] = 1 / 15
            img = cv2.filter2D(img, -1, kernel)
        boxes.append(row)
        visible.append(vis)
        stored = np.ascontiguousarray(np.rot90(img, -(rotation // 90))) if rotation else img
        assert stored.shape[:2] == (sh, sw)
        f = av.VideoFrame.from_ndarray(stored, format="rgb24")
        f.pts = p
        f.time_base = tb
        pts.append(p)
        out.mux(v.encode(f))
        p += int(rng.choice([60, 100, 140])) if vfr else 1
    out.mux(v.encode(None))
    if a is not None:
        seconds = float(p * tb)
        n = int(seconds * 48000)
        t = np.arange(n) / 48000
        tone = (0.2 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
        step = 960
        for s in range(0, n, step):
            chunk = tone[s : s + step]
            af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            af.sample_rate = 48000
            af.pts = s
            af.time_base = Fraction(1, 48000)
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    out.close()
    return Clip(dest, frames, boxes, visible, pts, tb)


def two_people(frames: int, size: tuple[int, int] = (320, 240)) -> list[tuple[Sprite, Path_]]:
    """Obama walking right and growing (zoom), Biden walking left: they cross mid-clip."""
    w, h = size
    a, b = sprite("fr-obama.jpg"), sprite("fr-biden.jpg")

    def pa(i: int) -> tuple[float, float, float]:
        t = i / max(frames - 1, 1)
        return (0.22 * w + 0.55 * w * t, 0.42 * h, 0.20 * w + 0.08 * w * t)

    def pb(i: int) -> tuple[float, float, float]:
        t = i / max(frames - 1, 1)
        return (0.78 * w - 0.55 * w * t, 0.58 * h, 0.18 * w)

    return [(a, pa), (b, pb)]


# ----------------------------------------------------------------------------- measuring


def unprotected(
    clip: Clip, output: Path, *, threshold: float = PROTECTED_MAD
) -> tuple[int, int, list[float]]:
    """(frames with a visible face, frames with an unprotected visible face, per-face MADs)
    comparing the output with the input inside each true box."""
    src, dst = _decode(clip.path), _decode(output)
    if len(src) != len(dst):
        raise AssertionError(f"frame counts differ: {len(src)} in, {len(dst)} out")
    with_face = bad = 0
    mads: list[float] = []
    for i, (s, d) in enumerate(zip(src, dst, strict=True)):
        seen = False
        broke = False
        for box, vis in zip(clip.boxes[i], clip.visible[i], strict=True):
            if not vis:
                continue
            x0, y0, x1, y1 = box
            if (x1 - x0) * (y1 - y0) < 64:
                continue
            seen = True
            mad = float(np.abs(s[y0:y1, x0:x1].astype(int) - d[y0:y1, x0:x1].astype(int)).mean())
            mads.append(mad)
            broke |= mad < threshold
        with_face += seen
        bad += broke
    return with_face, bad, mads


def _decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        out = []
        for fr in c.decode(video=0):
            rgb = fr.to_ndarray(format="rgb24")
            rot = round((fr.rotation or 0) / 90) % 4
            out.append(np.rot90(rgb, rot) if rot else rgb)
        return out


def consistency(clip: Clip, output: Path) -> dict[str, float]:
    """Temporal consistency of the output faces, per person over consecutive frames where
    the face is visible in both:

    * ``flicker_in`` / ``flicker_out``: mean absolute difference between consecutive frames
      inside the face's true box (union of the two boxes), input and output;
    * ``identity_consecutive``: mean cosine similarity (mobileface) between the output faces
      of consecutive frames (the book's identity-invariance; 1 = the same identity);
    * ``reidentified``: fraction of output faces that still match the input face of the same
      frame at the encoder's threshold (lower is better)."""
    from dpface.detect import detect_array
    from dpface.models.encoders import get_encoder

    enc = get_encoder("mobileface")
    src, dst = _decode(clip.path), _decode(output)
    f_in: list[float] = []
    f_out: list[float] = []
    sims: list[float] = []
    reid: list[bool] = []
    prev: dict[int, np.ndarray] = {}

    def face_at(img: np.ndarray, box: Box) -> object | None:
        faces = [f for f in detect_array(img).faces if not f.uncertain]
        best = max(faces, key=lambda f: _inter(f.box, box), default=None)
        return best if best is not None and _inter(best.box, box) > 0 else None

    for i in range(len(src)):
        for k, (box, vis) in enumerate(zip(clip.boxes[i], clip.visible[i], strict=True)):
            if not vis:
                prev.pop(k, None)
                continue
            if i > 0 and clip.visible[i - 1][k]:
                b0 = clip.boxes[i - 1][k]
                x0, y0 = min(box[0], b0[0]), min(box[1], b0[1])
                x1, y1 = max(box[2], b0[2]), max(box[3], b0[3])

                def mad(a: np.ndarray, b: np.ndarray) -> float:
                    return float(np.abs(a.astype(int) - b.astype(int)).mean())

                f_in.append(mad(src[i][y0:y1, x0:x1], src[i - 1][y0:y1, x0:x1]))
                f_out.append(mad(dst[i][y0:y1, x0:x1], dst[i - 1][y0:y1, x0:x1]))
            fo, fi = face_at(dst[i], box), face_at(src[i], box)
            if fo is None:
                prev.pop(k, None)
                continue
            e = np.asarray(enc.embed([fo])[0], dtype=np.float64)
            e /= np.linalg.norm(e)
            if k in prev:
                sims.append(float(prev[k] @ e))
            prev[k] = e
            if fi is not None:
                ei = np.asarray(enc.embed([fi])[0], dtype=np.float64)
                reid.append(float(ei @ e) / float(np.linalg.norm(ei)) >= enc.threshold)
    return {
        "flicker_in": float(np.mean(f_in)) if f_in else float("nan"),
        "flicker_out": float(np.mean(f_out)) if f_out else float("nan"),
        "identity_consecutive": float(np.mean(sims)) if sims else float("nan"),
        "reidentified": float(np.mean(reid)) if reid else float("nan"),
    }


def _inter(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy


def _run_dpface(
    clip: Path, warm: Path, out: Path, mechanism: str, epsilon: float
) -> dict[str, float]:
    from dpface import Anonymizer, Ledger, SurrogateGenerator
    from mechanisms import ApproxDP, DPBlur, IdentityLaplace

    gen = SurrogateGenerator() if mechanism == "identity-laplace" else None
    if gen is not None:
        mech = IdentityLaplace(epsilon=epsilon, dim=gen.identity_dim)
    else:
        mech = DPBlur(epsilon=epsilon, delta=1e-6, block=8, m=16)
    ledger = Ledger(":memory:", default_budget=ApproxDP(1000.0, 1e-3))
    anon = Anonymizer(mechanism=mech, generator=gen, ledger=ledger)
    # warm up the models (detector, landmarks, encoder, generator) before the clock starts
    tmp = out.with_name("warmup" + out.suffix)
    anon.anonymize_video(warm, tmp)
    tmp.unlink(missing_ok=True)
    t = time.perf_counter()
    res = anon.anonymize_video(clip, out)
    sec = time.perf_counter() - t
    if not res.ok:
        raise RuntimeError(res.error)
    return {
        "seconds": sec,
        "frames": res.frames,
        "predicted": res.predicted_frames,
        "tracks": len(res.tracks),
        "releases": res.receipt["releases"],
        **{f"t_{k}": v for k, v in res.timings.items()},
    }


def _num(x: float, digits: int) -> str:
    return "no face found in the output" if math.isnan(x) else f"{x:.{digits}f}"


def _run_cmd(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 frames, no file written")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "video.md")
    args = ap.parse_args(argv)
    frames = 12 if args.quick else args.frames
    size = (args.width, args.height)
    work = Path(tempfile.mkdtemp(prefix="dpface-bench-video-"))
    try:
        clip = make_clip(
            work / "clip.mp4",
            frames=frames,
            size=size,
            people=two_people(frames, size),
            fps=25,
            audio=True,
            cover={frames // 3: 0},
        )
        warm = make_clip(work / "warm.mp4", frames=2, size=size, people=two_people(2, size), fps=25)
        w, h = size
        still = make_clip(
            work / "still.mp4",
            frames=max(6, frames // 2),
            size=size,
            people=[(sprite("fr-obama.jpg"), lambda i: (w / 2, h / 2, 0.25 * w))],
            fps=25,
        )
        still_out: dict[str, Path] = {}
        rows = []
        deface = shutil.which("deface") or str(Path(sys.executable).with_name("deface"))
        out_d = work / "deface.mp4"
        sec = _run_cmd([deface, str(clip.path), "-o", str(out_d), "--keep-audio"])
        still_out["deface 1.5.0 (CenterFace, blur)"] = work / "still-deface.mp4"
        _run_cmd([deface, str(still.path), "-o", str(still_out["deface 1.5.0 (CenterFace, blur)"])])
        seen, bad, _ = unprotected(clip, out_d)
        rows.append(
            (
                "deface 1.5.0 (CenterFace, blur)",
                "command",
                sec,
                frames,
                seen,
                bad,
                "-",
                consistency(clip, out_d),
            )
        )
        for mech in ("identity-laplace", "dp-blur"):
            out = work / f"dpface-{mech}.mp4"
            stats = _run_dpface(clip.path, warm.path, out, mech, 6.0)
            still_out[f"dpface {mech}"] = work / f"still-{mech}.mp4"
            _run_dpface(still.path, warm.path, still_out[f"dpface {mech}"], mech, 6.0)
            seen, bad, _ = unprotected(clip, out)
            rows.append(
                (
                    f"dpface {mech}",
                    "in process",
                    stats["seconds"],
                    frames,
                    seen,
                    bad,
                    f"{stats['tracks']} tracks, {stats['releases']} releases, "
                    f"{stats['predicted']} frames by prediction",
                    consistency(clip, out),
                )
            )
            out_c = work / f"cli-{mech}"
            dpface = str(Path(sys.executable).with_name("dpface"))
            cmd = [dpface, "anonymize", str(clip.path), "-o", str(out_c), "-m", mech]
            cmd += ["--ledger", str(work / f"{mech}.db")]
            try:
                sec = _run_cmd(cmd)
                outs = list(out_c.rglob("*.mp4"))
                seen, bad, _ = unprotected(clip, outs[0]) if outs else (0, -1, [])
                rows.append((f"dpface {mech}", "command", sec, frames, seen, bad, "-", None))
            except (subprocess.CalledProcessError, IndexError) as err:
                print(f"the dpface command failed: {err}", file=sys.stderr)
        lines = [
            f"Clip: {frames} frames, {size[0]}x{size[1]}, 25 fps, two real faces (Obama, Biden "
            "from the sample photos) moving, one zooming, crossing; one frame with a covered "
            "face; AAC audio. Machine: 2 cores, no GPU, shared with other work (timings vary).",
            "",
            "| tool | timed | seconds | frames/s | frames with a visible face | with an "
            "unprotected face | notes |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, how, sec, n, seen, bad, note, _ in rows:
            lines.append(
                f"| {name} | {how} | {sec:.1f} | {n / sec:.2f} | {seen} | {bad} | {note} |"
            )
        lines += [
            "",
            "Temporal consistency (same run; per person, consecutive frames where the face is "
            "visible in both): flicker = mean absolute difference between consecutive frames "
            "inside the face box (input vs output); identity between consecutive output faces "
            "= mean mobileface cosine similarity (1: the same identity on every frame); "
            "re-identified = output faces still matching the input face of the same frame at "
            "the encoder's threshold.",
            "",
            "| tool | flicker in | flicker out | identity between consecutive output faces | "
            "re-identified |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, how, *_, cons in rows:
            if cons is None or how != ("command" if name.startswith("deface") else "in process"):
                continue
            lines.append(
                f"| {name} | {cons['flicker_in']:.2f} | {cons['flicker_out']:.2f} | "
                f"{_num(cons['identity_consecutive'], 3)} | {_num(cons['reidentified'], 2)} |"
            )
        lines += [
            "",
            f"Still face ({still.frames} frames, one face that does not move): the same "
            "measures; here the input's flicker is only the codec's, so what the output adds is "
            "the tool's own frame-to-frame change.",
            "",
            "| tool | flicker in | flicker out | identity between consecutive output faces | "
            "re-identified |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, path in still_out.items():
            cons = consistency(still, path)
            lines.append(
                f"| {name} | {cons['flicker_in']:.2f} | {cons['flicker_out']:.2f} | "
                f"{_num(cons['identity_consecutive'], 3)} | {_num(cons['reidentified'], 2)} |"
            )
        text = "\n".join(lines) + "\n"
        print(text)
        print(json.dumps({"rows": rows}, default=str))
        if not args.quick:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                "# Video benchmark\n\n"
                "Made by `.venv/bin/python scripts/bench_video.py` "
                f"({time.strftime('%Y-%m-%d')}). A face is unprotected in a frame when the "
                f"output's mean absolute difference from the input inside its true box is "
                f"below {PROTECTED_MAD:g} grey levels.\n\n" + text
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
