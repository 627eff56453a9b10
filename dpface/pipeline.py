"""The anonymiser a user calls: detect -> embed -> charge -> privatise -> generate -> receipt.

Two kinds of mechanism plug in:

* an **identity mechanism** (``IdentityLaplace``, ``IdentityGaussian``, ``IdentityVMF``): the
  face's identity embedding is privatised and a frozen generator draws a new face from it. The
  guarantee covers the identity channel (post-processing); the generator's record lists what it
  copies from the raw photo (geometry, skin, background...) and is NOT covered;
* an **image mechanism** (``DPPixelization``, ``DPBlur``): the face box is released with the
  m-pixel guarantee, no generator involved.

**Privacy units.** A face named by the caller (``subject=`` / ``subjects=``) is charged to that
person. A face nobody named is its own unit, keyed by a keyed digest (HMAC with the ledger's
secret) of the photo's decoded pixels and the face's place in it: releasing the same photo again
charges the same unit, so budgets bind across runs. Different photos of an unnamed person are
different units; only naming (or opt-in linking with a template store) joins them.

Every face is charged to its unit in the ledger *before* any noise is drawn (the identity path
draws inside the ledger's write transaction, so a reused pseudonym is decided atomically). If
the budget is refused, or the generator cannot replace a face (tiny, turned...), the face
region is covered by a flat grey mask instead -- a face is never returned unprotected -- and
the receipt says why. Output images carry no metadata (EXIF, GPS, ...) from the input.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from mechanisms.base import Mechanism
from mechanisms.budgets import ZCDP
from mechanisms.identity import IdentityGaussian, IdentityLaplace, IdentityVMF
from mechanisms.pixelization import DPBlur, DPPixelization
from mechanisms.registry import specs as mechanism_specs

from .detect import DEFAULT_DETECTOR, ImageFaces, detect_array
from .face import Face
from .generators.base import GeneratedFace, Generator
from .head import (
    HEAD_CELLS,
    HEAD_EPSILON,
    HEAD_MODES,
    HEAD_PIXELS,
    HEAD_SCALE,
    FaceLayer,
    HeadMode,
    ProtectedRegion,
    cell_block,
    grey_outside,
    head_box,
    head_channels,
    published_head,
)
from .ledger import BudgetExceeded, Ledger, event_to_json
from .linking import TemplateStore
from .models.images import ImageError, array_to_rgb8, load_rgb_frames
from .steering import AttributeSteering

if TYPE_CHECKING:
    from .video import VideoResult

__all__ = ["RECEIPT_SCHEMA", "AnonymizationResult", "Anonymizer", "FaceRecord"]

RECEIPT_SCHEMA = "dpface.receipt/2"
MASK_VALUE = 128
IdentityMechanism = IdentityLaplace | IdentityGaussian | IdentityVMF
ImageMechanism = DPPixelization | DPBlur
Pseudonym = Literal["fresh", "reuse"]
SubjectsInReceipt = Literal["name", "digest"]
Fallback = Literal["dp-pix", "mask"]
FALLBACK_PIXELS = 16  # m of the fallback DP-Pix release (pixels protected per cell mean)
LINK_ENCODER = "mobileface"  # encoder used to link faces when no generator names one
LINKED_UNIT = "unnamed face linked on the trusted side (subject not shown)"
LINKING_UNCOVERED = (
    "the raw biometric matching that linked this unnamed face to an enrolled subject: it "
    "decided which budget was charged and which pseudonym was reused, and no mechanism covers it"
)


@dataclass(frozen=True)
class FaceRecord:
    """What happened to one detected face.

    ``subject`` is the ledger's privacy unit (trusted side: a caller's name, a ``face:...``
    keyed digest for an unnamed face, or the enrolled subject a linked face was matched to);
    ``unit`` is how receipts show it (never the subject of a linked unnamed face)."""

    index: int
    box: tuple[int, int, int, int]
    subject: str
    unit: str
    status: str  # "replaced" | "pixelized" | "masked"
    reason: str | None = None
    refused: bool = False  # masked because the budget refused the release
    ledger_event: int | None = None
    identity: str = "none"  # "fresh draw" | "reused pseudonym" | "none"
    spent: dict[str, float] | None = None
    remaining_epsilon: float | None = None
    channels: dict[str, list[str]] | None = None
    linked: bool = False  # an unnamed face charged to an enrolled subject by raw matching
    protection: str = "none"  # "generator" | "mechanism" | "dp-fallback" | "mask"
    uncertain: bool = False  # the detector was unsure this is a face; protected all the same
    detector: str | None = None  # which detector found it
    head: dict[str, Any] | None = None  # head protection (dpface.head): box, how, ledger event

    def as_dict(self) -> dict[str, Any]:
        """Everything, including the trusted-side subject (for the caller, not for receipts)."""
        return asdict(self)

    def as_receipt(self) -> dict[str, Any]:
        """What a receipt beside the output may say: no subject, spending or ledger event of
        a linked face (they would tie this photo to the enrolled person's other releases)."""
        out = asdict(self)
        del out["subject"]
        if self.linked:
            for key in ("spent", "remaining_epsilon", "ledger_event"):
                out[key] = None
            if out["head"] is not None:
                out["head"]["ledger_event"] = None
        return out


@dataclass
class AnonymizationResult:
    """One input image: the de-identified image (None if unreadable), faces and receipt."""

    source: str
    image: np.ndarray | None = field(repr=False)
    faces: list[FaceRecord]
    receipt: dict[str, Any]
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Unit:
    subject: str  # the ledger's privacy unit
    shown: str  # what the receipt says
    named: bool
    linked: bool = False


def _int_box(box: Sequence[float], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    h, w = shape[0], shape[1]
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _face_region(
    face: Face, shape: tuple[int, ...], margin: float = 0.25
) -> tuple[int, int, int, int]:
    """The face box grown by ``margin`` and by the landmarks' extent (covers brows and chin)."""
    lm = face.landmarks68
    x0 = min(face.box[0], float(lm[:, 0].min()))
    y0 = min(face.box[1], float(lm[:, 1].min()))
    x1 = max(face.box[2], float(lm[:, 0].max()))
    y1 = max(face.box[3], float(lm[:, 1].max()))
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return _int_box((x0 - dx, y0 - 1.5 * dy, x1 + dx, y1 + dy), shape)


def _with_note(channels: dict[str, list[str]], note: str | None) -> dict[str, list[str]]:
    if note is not None:
        channels = {**channels, "notes": [*channels.get("notes", []), note]}
    return channels


def _epsilon_of(mechanism: Mechanism) -> float:
    """The epsilon of one release of ``mechanism`` (its budget's epsilon)."""
    budget = mechanism.guarantee.budget
    if isinstance(budget, ZCDP):  # its epsilon at delta = 1e-9, rounded up by the budget
        return float(budget.to_approx(1e-9).epsilon)
    return float(budget.epsilon)


def _face_flags(face: Face) -> tuple[bool, bool, str | None]:
    """(uncertain, landmarks usable, detector name) of a detection."""
    return face.uncertain, face.landmarks_ok, face.detector


def _photo_key(rgb: np.ndarray) -> bytes:
    """A digest of the decoded pixels (what the unnamed-face units are keyed on)."""
    h = hashlib.sha256(f"{rgb.shape}|{rgb.dtype}|".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return b"photo:" + h.digest()


def _version() -> str:
    """The dpface version receipts carry (``dpface._version``, the package's one constant)."""
    from ._version import __version__

    return __version__


@cache
def _git_commit() -> str | None:
    """The source checkout's commit, when dpface runs from one (read from .git, no subprocess)."""
    git = Path(__file__).resolve().parents[1] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            loose = git / ref
            if loose.is_file():
                return loose.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
            return None
        return head
    except OSError:
        return None


@cache
def _model_hashes() -> dict[str, str]:
    """sha256 of every pinned model file (set-up verifies each against these)."""
    from .models.store import manifest

    return {
        name: f.sha256 for name, f in sorted(manifest().items()) if not name.startswith("samples/")
    }


class Anonymizer:
    """De-identify photos under a per-subject privacy budget, with a receipt for every face."""

    # what dpface.batch passes to anonymize_video for the videos of a run (audio,
    # detect_every; set by dpface.config from --audio/--detect-every); empty: the defaults
    video_options: Mapping[str, Any] = MappingProxyType({})

    def __init__(
        self,
        *,
        mechanism: Mechanism,
        generator: Generator | None = None,
        ledger: Ledger | None = None,
        detector: str = DEFAULT_DETECTOR,
        pseudonym: Pseudonym = "fresh",
        templates: TemplateStore | None = None,
        steering: AttributeSteering | None = None,
        encoder: Any = None,
        receipt_subjects: SubjectsInReceipt = "name",
        fallback: Fallback = "dp-pix",
        fallback_epsilon: float | None = None,
        fallback_cells: int = 8,
        head: HeadMode = "keep",
        head_epsilon: float | None = None,
        head_cells: int = HEAD_CELLS,
    ) -> None:
        """``templates``: opt-in face linking. Named faces are enrolled in the template store
        (raw face templates: keep it on the trusted side, apart from outputs and ledger) and
        later unnamed faces that match an enrolled subject are charged to that subject. The
        receipts then list the raw matching as an uncovered channel and never name the subject.
        ``steering`` fills the generator's attribute channel from an attribute mechanism
        (``dpface.steering``). ``encoder``: an identity encoder instance to embed faces with
        (default: looked up by the generator's encoder name); needed for encoders built from a
        path, such as ``get_encoder("arcface-onnx", model_path=...)``. ``receipt_subjects``:
        ``"digest"`` shows named subjects in receipts as keyed digests instead of names.

        ``fallback``: how a face the generator cannot take is protected -- one the detector is
        unsure of, one too small or turned for landmarks, or one the generator refuses:
        ``"dp-pix"`` (default) releases its region with DP pixelization at ``fallback_epsilon``
        (default: the mechanism's epsilon), cells sized so the region is at most
        ``fallback_cells`` cells across, charged to the face's unit like any release;
        ``"mask"`` covers it with flat grey (releases nothing, charges nothing). A refused
        fallback is masked. No face is ever returned unprotected.

        ``head`` (identity mechanisms; :mod:`dpface.head`): ``"keep"`` (default) leaves the
        head around a generated face -- hair, ears, outline -- as in the photo; ``"dp-pix"``
        releases every face's head box with DP-Pix at ``head_epsilon`` (default
        ``HEAD_EPSILON`` = 1), ``head_cells`` cells across, charged to the face's unit (a photo
        then costs the identity release plus the head release; a refused head is masked);
        ``"mask"`` paints the head box grey (nothing charged). The face's own protection is
        put back on top either way."""
        if encoder is not None and generator is not None and encoder.name != generator.encoder:
            raise ValueError(
                f"the generator reads {generator.encoder} identities but the "
                f"encoder given is {encoder.name}"
            )
        spec = next((s for s in mechanism_specs(face=True) if isinstance(mechanism, s.cls)), None)
        if spec is None:
            raise TypeError(
                f"{type(mechanism).__name__} is not a face mechanism: use one of "
                f"{', '.join(s.cls.__name__ for s in mechanism_specs(face=True))} "
                "(mechanisms.registry)"
            )
        self.consumes = spec.consumes  # "embedding" (a new face) or "region" (its pixels)
        if spec.consumes == "embedding":
            if generator is None:
                raise ValueError(
                    "an identity mechanism needs a generator to turn the privatised identity "
                    "into a face (e.g. dpface.generators.SurrogateGenerator())"
                )
            dim = getattr(mechanism, "dim", None)
            if generator.identity_dim != dim:
                raise ValueError(
                    f"the generator reads {generator.identity_dim}-d {generator.encoder} "
                    f"identities but the mechanism privatises {dim}-d vectors"
                )
        elif generator is not None:
            raise ValueError("image mechanisms (DP-Pix, DP blur) do not use a generator")
        if pseudonym not in ("fresh", "reuse"):
            raise ValueError("pseudonym must be 'fresh' or 'reuse'")
        if receipt_subjects not in ("name", "digest"):
            raise ValueError("receipt_subjects must be 'name' or 'digest'")
        if templates is not None and not isinstance(templates, TemplateStore):
            raise TypeError("templates must be a dpface.linking.TemplateStore (or None)")
        if steering is not None and generator is None:
            raise ValueError("attribute steering needs a generator (an identity mechanism)")
        if fallback not in ("dp-pix", "mask"):
            raise ValueError("fallback must be 'dp-pix' or 'mask'")
        if (
            isinstance(fallback_cells, bool)
            or not isinstance(fallback_cells, int)
            or not (1 <= fallback_cells <= 64)
        ):
            raise ValueError("fallback_cells must be an integer from 1 to 64")
        eps = fallback_epsilon if fallback_epsilon is not None else _epsilon_of(mechanism)
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError("fallback_epsilon must be a finite number > 0")
        if head not in HEAD_MODES:
            raise ValueError(f"head must be one of {', '.join(HEAD_MODES)}")
        if head != "keep" and spec.consumes != "embedding":
            raise ValueError(
                "head protection is for identity mechanisms (a generated face with the photo's "
                "head around it); an image mechanism releases the face region itself"
            )
        h_eps = head_epsilon if head_epsilon is not None else HEAD_EPSILON
        if not (
            isinstance(h_eps, (int, float))
            and not isinstance(h_eps, bool)
            and math.isfinite(h_eps)
            and h_eps > 0
        ):
            raise ValueError("head_epsilon must be a finite number > 0")
        if (
            isinstance(head_cells, bool)
            or not isinstance(head_cells, int)
            or not (1 <= head_cells <= 64)
        ):
            raise ValueError("head_cells must be an integer from 1 to 64")
        if head != "keep" and generator is not None:
            generator = generator.for_released_head()  # nothing of the photo to blend into
        self.head: HeadMode = head
        self.head_epsilon = float(h_eps)
        self.head_cells = head_cells
        self.fallback: Fallback = fallback
        self.fallback_epsilon = float(eps)
        self.fallback_cells = fallback_cells
        self.steering = steering
        self.templates = templates
        self.mechanism = mechanism
        self.generator = generator
        self.ledger = ledger if ledger is not None else Ledger(":memory:")
        self.detector = detector
        self.pseudonym: Pseudonym = pseudonym
        self.receipt_subjects: SubjectsInReceipt = receipt_subjects
        self._encoder: Any = encoder
        self._timings: dict[str, float] = {}
        self._release_key: str | None = None  # set by anonymize(release_key=...) for one call

    # ------------------------------------------------------------------ helpers
    @property
    def mechanism_name(self) -> str:
        return type(self.mechanism).__name__

    @property
    def seeded(self) -> bool:
        """True when the mechanism's randomness is seeded: reproducible, so NOT private."""
        return bool(self.mechanism.seeded)

    def _encoder_for(self) -> Any:
        if self._encoder is None:
            from .models.encoders import get_encoder

            name = self.generator.encoder if self.generator is not None else LINK_ENCODER
            self._encoder = get_encoder(name)
        return self._encoder

    def _tick(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self._timings[stage] = self._timings.get(stage, 0.0) + now - since
        return now

    def pseudonym_key(self) -> str:
        """The key a reusable pseudonym is stored under: a digest of the full guarantee
        (mechanism, its parameters and accounting event, encoder, generator). A pseudonym is
        reused only under exactly the guarantee it was released with; the ledger never stores
        or reuses seeded or non-DP releases."""
        g = self.mechanism.guarantee
        parts = {
            "mechanism": self.mechanism_name,
            "guarantee": g.statement(),
            "is_dp": g.is_dp,
            "event": event_to_json(self.mechanism.event()),
            "encoder": None if self.generator is None else self.generator.encoder,
            "generator": None if self.generator is None else self.generator.name,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _release_args(self, mechanism: Mechanism | None = None) -> dict[str, Any]:
        mech = self.mechanism if mechanism is None else mechanism
        g = mech.guarantee
        return {
            "mechanism": type(mech).__name__,
            "budget": g.budget,
            "event": mech.event(),
            "note": mech.statement(),
            "seeded": bool(mech.seeded),
            "is_dp": g.is_dp,
        }

    def _refusal(self, err: Exception) -> str:
        if isinstance(err, KeyError):
            return str(err.args[0]) if err.args else str(err)
        return str(err)

    def settings(self) -> dict[str, Any]:
        """Run provenance for the ledger and the report: versions, mechanism, models."""
        g = self.mechanism.guarantee
        gen = self.generator
        channels: dict[str, list[str]]
        if gen is not None and hasattr(gen, "channels"):
            channels = gen.channels(None).as_dict()
        elif gen is None:
            channels = {
                "covered": ["pixels of the face region (m-pixel unit)"],
                "uncovered": [
                    "everything outside the face region",
                    "the position and size of the region",
                ],
            }
        else:
            channels = {}
        return {
            "dpface_version": _version(),
            "git_commit": _git_commit(),
            "mechanism": self.mechanism_name,
            "statement": self.mechanism.statement(),
            "budget_per_release": str(g.budget),
            "is_dp": g.is_dp,
            "seeded": self.seeded,
            "detector": self.detector,
            "encoder": None if gen is None and self.templates is None else self._encoder_for().name,
            "generator": None if gen is None else gen.name,
            "pseudonym": self.pseudonym,
            "linking": "template matching (trusted side)" if self.templates else "none",
            "attribute_steering": None if self.steering is None else self.steering.describe(),
            "channels": channels,
            "head": self.head_settings(),
            "model_hashes": _model_hashes(),
        }

    def head_settings(self) -> dict[str, Any]:
        """Head protection as receipts and the ledger record it (:mod:`dpface.head`)."""
        if self.head == "keep":
            return {"mode": "keep"}
        out: dict[str, Any] = {"mode": self.head, "box": f"{HEAD_SCALE:g} face widths, square"}
        if self.head == "dp-pix":
            out.update(epsilon=self.head_epsilon, cells=self.head_cells, m=HEAD_PIXELS)
        return out

    # ------------------------------------------------------------------ main entry
    def anonymize(
        self,
        image: str | Path | np.ndarray,
        *,
        subject: str | None = None,
        subjects: Sequence[str | None] | None = None,
        name: str | None = None,
        release_key: str | None = None,
    ) -> AnonymizationResult:
        """De-identify every face of one photo.

        ``subject`` names the person in a single-face photo; ``subjects`` names faces left to
        right (``None``, or a list shorter than the faces found, leaves a face unnamed; a name
        for a face beyond those found is an error and nothing is released). An unnamed face is
        its own privacy unit keyed by this photo's pixels: the same photo released again
        charges the same unit; another photo of the same person is another unit. ``name`` is
        what the receipt calls the input (default: the file's name, never its folder).

        ``release_key`` (resumable jobs, :mod:`dpface.manifest`): a key naming this photo's
        output in a job (``"resume:<job>:<item>"``). Each fresh release is then made with
        :meth:`Ledger.release_once` under ``<release_key>:<face index>``: anonymising the same
        photo again under the same key republishes the values already paid for (the same
        output) instead of charging again. Pseudonyms (``pseudonym="reuse"``) keep their own,
        already idempotent, rule."""
        self._release_key = release_key
        try:
            return self._anonymize(image, subject=subject, subjects=subjects, name=name)
        finally:
            self._release_key = None

    def _anonymize(
        self,
        image: str | Path | np.ndarray,
        *,
        subject: str | None,
        subjects: Sequence[str | None] | None,
        name: str | None,
    ) -> AnonymizationResult:
        if isinstance(image, np.ndarray):
            source = name if name is not None else "<array>"
        else:
            source = name if name is not None else Path(image).name
        self._timings = {}
        t = time.perf_counter()
        try:
            if isinstance(image, np.ndarray):
                rgb, frames = array_to_rgb8(image), 1
            else:
                rgb, frames = load_rgb_frames(image)
        except (ImageError, OSError) as err:
            return self._failed(source, f"could not read the image: {err}")
        t = self._tick("read", t)
        found = detect_array(rgb, source=source, detector=self.detector)
        t = self._tick("detect", t)
        if not found.ok:
            return self._failed(source, found.error or "detection failed")
        faces = found.faces
        given = self._given_names(faces, subject, subjects)
        if isinstance(given, str):
            return self._failed(source, given)
        embeddings: np.ndarray | None = None
        if faces and (self.generator is not None or self.templates is not None):
            embeddings = self._encoder_for().embed(faces)
            t = self._tick("embed", t)
        regions = [_face_region(f, rgb.shape) for f in faces]
        units = self._units(rgb, regions, given, embeddings)
        out = rgb.copy()
        records: list[FaceRecord] = []
        if self.consumes == "region":
            for i, (face, region, unit) in enumerate(zip(faces, regions, units, strict=True)):
                mech = cast(ImageMechanism, self.mechanism)
                out, rec = self._pixelize_face(out, face, region, i, unit, mech)
                records.append(rec)
        else:
            assert embeddings is not None or not faces
            out, records = self._replace_faces(out, faces, regions, units, embeddings, rgb)
        receipt = self._receipt(source, records, found)
        if frames > 1:  # the others are in no result: said, not silently dropped
            receipt["input_note"] = (
                f"only the first of the input's {frames} frames/pages was read and anonymised; "
                f"the other {frames - 1} are not in this result (save them as separate images, "
                "or give the clip as a video)"
            )
        return AnonymizationResult(source, out, records, receipt, timings=dict(self._timings))

    def _given_names(
        self, faces: list[Face], subject: str | None, subjects: Sequence[str | None] | None
    ) -> list[str | None] | str:
        """The caller's names per face (None = unnamed), normalised by the ledger's rule."""
        from .ledger import normalize_subject

        if subject is not None and subjects is not None:
            raise ValueError("pass subject= or subjects=, not both")
        if subject is not None:
            # the one person of the photo: its only face, or its only confident face (the
            # uncertain detections beside it stay unnamed units, protected and charged)
            subject = normalize_subject(subject)
            sure = [i for i, f in enumerate(faces) if not f.uncertain]
            named = [0] if len(faces) == 1 else sure if len(sure) == 1 else None
            if named is None:
                return (
                    f"subject={subject!r} names one person but the photo has {len(faces)} "
                    f"faces ({len(sure)} confident): pass subjects=[...] (left to right) "
                    "instead"
                )
            return [subject if i in named else None for i in range(len(faces))]
        if subjects is None:
            return [None] * len(faces)
        extra = [i for i, s in enumerate(subjects) if i >= len(faces) and s is not None]
        if extra:
            return (
                f"subjects= names face {extra[0]} (0-based, left to right) but only "
                f"{len(faces)} face(s) were detected; nothing was released"
            )
        names = [None if s is None else normalize_subject(s) for s in subjects[: len(faces)]]
        return names + [None] * (len(faces) - len(names))

    def _units(
        self,
        rgb: np.ndarray,
        regions: list[tuple[int, int, int, int]],
        given: list[str | None],
        embeddings: np.ndarray | None,
    ) -> list[_Unit]:
        """The privacy unit of every face: the caller's name; else an enrolled subject the
        template store matches (opt-in); else the photo-keyed unit of an unnamed face."""
        t = time.perf_counter()
        photo = self.ledger.unit_digest(_photo_key(rgb)) if None in given else ""
        linking = self.templates if embeddings is not None else None
        enc: Any = self._encoder_for() if linking is not None else None
        units: list[_Unit] = []
        for i, (region, name) in enumerate(zip(regions, given, strict=True)):
            if name is not None:
                if linking is not None and embeddings is not None:
                    linking.enroll(name, enc.name, embeddings[i])
                shown = (
                    name
                    if self.receipt_subjects == "name"
                    else "subject:" + self.ledger.unit_digest(b"subject:" + name.encode())[:16]
                )
                units.append(_Unit(name, shown, named=True))
                continue
            if linking is not None and embeddings is not None:
                hit = linking.match(enc.name, embeddings[i], enc.threshold)
                if hit is not None:
                    units.append(_Unit(hit[0], LINKED_UNIT, named=False, linked=True))
                    continue
            unit = self.ledger.face_unit(photo, region)
            units.append(_Unit(unit, unit, named=False))
        self._tick("units", t)
        return units

    def _mask(self, img: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = region
        img[y0:y1, x0:x1] = MASK_VALUE
        return img

    def _spent(self, subject: str) -> tuple[dict[str, float], float]:
        s = self.ledger.spent(subject)
        return {"epsilon": s.epsilon, "delta": s.delta}, self.ledger.remaining(subject)

    def _masked(
        self,
        img: np.ndarray,
        face: Face,
        region: tuple[int, int, int, int],
        index: int,
        unit: _Unit,
        reason: str,
        *,
        refused: bool,
        **extra: Any,
    ) -> tuple[np.ndarray, FaceRecord]:
        uncertain, _, detector = _face_flags(face)
        rec = FaceRecord(
            index,
            region,
            unit.subject,
            unit.shown,
            "masked",
            reason=reason,
            refused=refused,
            linked=unit.linked,
            protection="mask",
            uncertain=uncertain,
            detector=detector,
            **extra,
        )
        return self._mask(img, region), rec

    def _fallback_mechanism(self, region: tuple[int, int, int, int]) -> DPPixelization:
        """DP-Pix for one region, with cells so the region is ``fallback_cells`` cells across
        (coarse enough that no face detail survives, whatever the region's size). A seeded run
        draws its fallback noise from the same seeded stream (reproducible, and labelled NOT
        private like the rest of the run); otherwise from a fresh CSPRNG."""
        return self._cells_release(
            region, self.fallback_cells, self.fallback_epsilon, FALLBACK_PIXELS
        )

    def _protect_fallback(
        self,
        img: np.ndarray,
        face: Face,
        region: tuple[int, int, int, int],
        index: int,
        unit: _Unit,
        why: str,
        **extra: Any,
    ) -> tuple[np.ndarray, FaceRecord]:
        """A face the generator cannot take: DP-Pix (charged) or, if refused, a mask."""
        if self.fallback == "mask":
            return self._masked(img, face, region, index, unit, why, refused=False, **extra)
        return self._pixelize_face(
            img, face, region, index, unit, self._fallback_mechanism(region), why=why
        )

    def _pixelize_face(
        self,
        img: np.ndarray,
        face: Face,
        region: tuple[int, int, int, int],
        index: int,
        unit: _Unit,
        mech: DPPixelization | DPBlur,
        *,
        why: str | None = None,
    ) -> tuple[np.ndarray, FaceRecord]:
        """Release the region with an image mechanism, charged first (``why``: the reason a
        fallback was needed; None when ``mech`` is the run's own mechanism)."""
        key = None if self._release_key is None else f"{self._release_key}:{index}"
        if key is not None and why is not None:
            key += ":fallback"
        x0, y0, x1, y1 = region
        try:
            event, pixels = self._release_region(img, region, unit.subject, mech, key)
        except (BudgetExceeded, KeyError) as err:
            reason = f"budget refused: {self._refusal(err)}"
            if why is not None:
                reason = f"{why}; its DP fallback was refused too: {self._refusal(err)}"
            return self._masked(img, face, region, index, unit, reason, refused=True)
        out = img.copy()  # outside the region the mechanism releases the pixels unchanged
        out[y0:y1, x0:x1] = pixels
        spent, left = self._spent(unit.subject)
        uncertain, _, detector = _face_flags(face)
        channels: dict[str, list[str]] = {
            "covered": [
                f"pixels of the face region (m-pixel unit): {mech.statement()}"
                if why is not None
                else "pixels of the face region (m-pixel unit)"
            ],
            "uncovered": [
                "everything outside the face region",
                "the position and size of the region",
            ],
            "notes": [] if why is None else [f"DP fallback: {why}"],
        }
        if unit.linked:
            channels["uncovered"].append(LINKING_UNCOVERED)
        rec = FaceRecord(
            index,
            region,
            unit.subject,
            unit.shown,
            "pixelized",
            reason=why,
            ledger_event=event,
            spent=spent,
            remaining_epsilon=left,
            channels=channels,
            linked=unit.linked,
            protection="mechanism" if why is None else "dp-fallback",
            uncertain=uncertain,
            detector=detector,
        )
        return out, rec

    def _release_region(
        self,
        img: np.ndarray,
        region: tuple[int, int, int, int],
        subject: str,
        mech: DPPixelization | DPBlur,
        key: str | None,
    ) -> tuple[int, np.ndarray]:
        """Charge ``subject`` one release of the image mechanism ``mech``, then draw it over
        ``region`` of ``img``: (ledger event, the region's released pixels). Under a job's
        release ``key`` the charge, the draw and the kept pixels are one ledger transaction
        (a resumed job republishes them). Raises BudgetExceeded or KeyError before any noise
        is drawn."""
        x0, y0, x1, y1 = region
        drawn = 0.0

        def draw() -> np.ndarray:
            nonlocal drawn
            t0 = time.perf_counter()
            released = np.asarray(mech(img, region))[y0:y1, x0:x1]
            drawn += time.perf_counter() - t0
            return released

        t = time.perf_counter()
        try:
            if key is None:
                event = self.ledger.charge(subject, **self._release_args(mech)).id
                pixels = draw()
            else:
                rel = self.ledger.release_once(
                    subject, key=key, draw=draw, **self._release_args(mech)
                )
                assert rel.charge is not None
                event, pixels = rel.charge.id, np.asarray(rel.vector)
        finally:  # the draw is "privatise", the ledger's work "charge"
            self._timings["privatise"] = self._timings.get("privatise", 0.0) + drawn
            self._timings["charge"] = (
                self._timings.get("charge", 0.0) + time.perf_counter() - t - drawn
            )
        return event, pixels

    def _privatise(
        self, unit: _Unit, emb: np.ndarray, index: int | None = None
    ) -> tuple[np.ndarray, int | None, str]:
        """(privatised identity, ledger event or None, how) -- charged, drawn and (with
        ``pseudonym="reuse"``, or under a job's release key) stored in one ledger transaction.
        Raises BudgetExceeded."""
        mech = cast(IdentityMechanism, self.mechanism)  # consumes an embedding (registry)
        drawn = 0.0

        def draw() -> np.ndarray:
            nonlocal drawn
            t0 = time.perf_counter()
            value = np.asarray(mech(emb.astype(np.float64)))
            drawn = time.perf_counter() - t0
            return value

        key = self.pseudonym_key() if self.pseudonym == "reuse" else None
        t = time.perf_counter()
        try:
            if key is None and self._release_key is not None and index is not None:
                rel = self.ledger.release_once(
                    unit.subject,
                    key=f"{self._release_key}:{index}",
                    draw=draw,
                    **self._release_args(),
                )
            else:
                rel = self.ledger.release(unit.subject, key=key, draw=draw, **self._release_args())
        finally:
            self._timings["privatise"] = self._timings.get("privatise", 0.0) + drawn
            self._timings["charge"] = (
                self._timings.get("charge", 0.0) + time.perf_counter() - t - drawn
            )
        if rel.reused:
            return rel.vector, None, "reused pseudonym"
        assert rel.charge is not None
        return rel.vector, rel.charge.id, "fresh draw"

    def _replace_faces(
        self,
        img: np.ndarray,
        faces: list[Face],
        regions: list[tuple[int, int, int, int]],
        units: list[_Unit],
        embeddings: np.ndarray | None,
        original: np.ndarray,
    ) -> tuple[np.ndarray, list[FaceRecord]]:
        """Every face replaced by the generator (or its fallback, or masked), then, with head
        protection, every head released around them. ``original``: the photo as read."""
        assert self.generator is not None
        records: list[FaceRecord] = []
        layers: dict[int, FaceLayer] = {}
        if not faces or embeddings is None:
            return img, records
        for i, (face, region, unit, emb) in enumerate(
            zip(faces, regions, units, embeddings, strict=True)
        ):
            uncertain, landmarks_ok, detector = _face_flags(face)
            if uncertain or not landmarks_ok:
                why = (
                    "the detector was unsure this is a face"
                    if uncertain
                    else "too small or turned for reliable landmarks"
                )
                img, rec = self._protect_fallback(img, face, region, i, unit, why)
                records.append(rec)
                continue
            try:
                private, event_id, how = self._privatise(unit, emb, i)
            except (BudgetExceeded, KeyError) as err:
                img, rec = self._masked(
                    img,
                    face,
                    region,
                    i,
                    unit,
                    f"budget refused: {self._refusal(err)}",
                    refused=True,
                )
                records.append(rec)
                continue
            channel, steer_note = None, None
            if self.steering is not None:
                t = time.perf_counter()
                steered = self.steering.steer(
                    subject=unit.subject, embedding=emb, face=face, ledger=self.ledger
                )
                channel, steer_note = steered.channel, steered.refused or steered.note
                self._tick("steer", t)
            t = time.perf_counter()
            result = self.generator.generate(img, face, private, channel)
            self._tick("generate", t)
            spent, left = self._spent(unit.subject)
            if not result.replaced:
                img, rec = self._protect_fallback(
                    img,
                    face,
                    region,
                    i,
                    unit,
                    f"generator could not replace it: {result.reason} (its identity release "
                    f"was charged, ledger event {event_id})",
                )
                records.append(rec)
                continue
            img = result.image
            layer = self._face_layer(result)
            if layer is not None:
                layers[i] = layer
            channels = _with_note(result.channels.as_dict(), steer_note)
            if unit.linked:
                channels = {**channels, "uncovered": [*channels["uncovered"], LINKING_UNCOVERED]}
            records.append(
                FaceRecord(
                    i,
                    region,
                    unit.subject,
                    unit.shown,
                    "replaced",
                    ledger_event=event_id,
                    identity=how,
                    spent=spent,
                    remaining_epsilon=left,
                    channels=channels,
                    linked=unit.linked,
                    protection="generator",
                    detector=detector,
                )
            )
        if self.head == "keep":
            return img, records
        tops: list[FaceLayer | ProtectedRegion] = []
        for rec in records:
            x0, y0, x1, y1 = rec.box
            tops.append(layers.get(rec.index) or ProtectedRegion(rec.box, img[y0:y1, x0:x1].copy()))
        return self._protect_heads(original, img, faces, records, tops)

    def _face_layer(self, result: GeneratedFace) -> FaceLayer | None:
        """What head protection puts back of a generated face (None: no head protection, or
        a generator that gives no layer -- then its whole region goes back as it is)."""
        if self.head == "keep" or result.region is None:
            return None
        if result.alpha is None or result.layer is None:
            return None
        return FaceLayer(result.region, result.alpha, result.layer)

    def head_mechanism(self, box: tuple[int, int, int, int]) -> DPPixelization:
        """DP-Pix for one head box: ``head_cells`` cells across, m = ``HEAD_PIXELS``, at
        ``head_epsilon`` (seeded runs draw from the run's seeded stream, labelled NOT private)."""
        return self._cells_release(box, self.head_cells, self.head_epsilon, HEAD_PIXELS)

    def _cells_release(
        self, box: tuple[int, int, int, int], cells: int, epsilon: float, m: int
    ) -> DPPixelization:
        """DP-Pix over ``box`` with at most ``cells`` cells across (the fallback's and the
        head's): from the run's seeded stream in a seeded run, else a fresh CSPRNG."""
        shared = self.mechanism.randomness if self.seeded else None
        return DPPixelization(epsilon=epsilon, block=cell_block(box, cells), m=m, randomness=shared)

    def _protect_heads(
        self,
        original: np.ndarray,
        img: np.ndarray,
        faces: list[Face],
        records: list[FaceRecord],
        tops: list[FaceLayer | ProtectedRegion],
    ) -> tuple[np.ndarray, list[FaceRecord]]:
        """Head protection (:mod:`dpface.head`): each face's head box is released from the
        ORIGINAL photo's pixels with DP-Pix, charged to the face's unit first (or painted
        grey: ``head="mask"``, a refused head, or a face whose own release was refused), in
        face order; then each face's own protection (``tops``) goes back on top."""
        canvas = img.copy()
        out: list[FaceRecord] = []
        boxes = [head_box(face.box, original.shape) for face in faces]
        grey = grey_outside(original, [*boxes, *(r.box for r in records)])
        for rec, box in zip(records, boxes, strict=True):
            x0, y0, x1, y1 = box
            info: dict[str, Any] = {"box": list(box), "ledger_event": None}
            if self.head == "mask" or rec.refused:
                canvas[y0:y1, x0:x1] = MASK_VALUE
                why = "head='mask'" if self.head == "mask" else "the face's own release was refused"
                info.update(protection="mask", reason=why)
                how = f"painted flat grey ({why}; nothing released)"
            else:
                mech = self.head_mechanism(box)
                key = None if self._release_key is None else f"{self._release_key}:{rec.index}"
                try:
                    event, pixels = self._release_region(
                        original, box, rec.subject, mech, None if key is None else key + ":head"
                    )
                except (BudgetExceeded, KeyError) as err:
                    canvas[y0:y1, x0:x1] = MASK_VALUE
                    why = f"head release refused: {self._refusal(err)}"
                    info.update(protection="mask", reason=why, refused=True)
                    how = f"painted flat grey ({why})"
                else:
                    canvas[y0:y1, x0:x1] = published_head(pixels, mech.block, grey)
                    info.update(
                        protection="dp-pix",
                        ledger_event=event,
                        cells=self.head_cells,
                        guarantee=mech.statement(),
                    )
                    how = (
                        "DP-Pix from the photo's pixels, its cells drawn smoothly between their "
                        f"centres (post-processing): {mech.statement()}"
                    )
            spent, left = (
                self._spent(rec.subject) if rec.spent is not None else (None, rec.remaining_epsilon)
            )
            out.append(
                replace(
                    rec,
                    head=info,
                    channels=head_channels(rec.channels or {}, box, how),
                    spent=spent,
                    remaining_epsilon=left,
                )
            )
        for top in tops:
            top.over(canvas)
        return canvas, out

    # ------------------------------------------------------------------ receipts
    def _mechanism_block(self) -> dict[str, Any]:
        g = self.mechanism.guarantee
        return {
            "name": self.mechanism_name,
            "budget_per_release": str(g.budget),
            "guarantee": self.mechanism.statement(),
            "privacy_unit": g.privacy_unit,
            "neighbouring": g.neighbouring,
            "is_dp": g.is_dp,
            "seeded": self.seeded,
            "dp_event": json.loads(event_to_json(self.mechanism.event())),
            "randomness": "SEEDED (reproducible by anyone with the seed: NOT private)"
            if self.seeded
            else "CSPRNG (AES-CTR keyed from the OS)",
        }

    def _not_protected(self, linked: bool) -> list[str]:
        items = [
            "faces the detector missed (see detection_note)",
            "everything outside the replaced face regions"
            if self.head == "keep"
            else "everything outside the faces' head boxes",
            "different photos of an unnamed person: each photo's face is its own privacy unit, "
            "so their releases are not composed (name the person to join them)",
            "metadata is dropped from written images; in-memory arrays carry none",
        ]
        if linked:
            items.append(LINKING_UNCOVERED)
        return [*self.release_caveats(), *items]

    def release_caveats(self) -> list[str]:
        """What heads every receipt's ``not_protected`` list (photo and video): a release
        that is not differentially private, and one whose noise was seeded."""
        caveats = []
        if not self.mechanism.guarantee.is_dp:
            caveats.append("this release is NOT differentially private (see mechanism)")
        if self.seeded:
            caveats.append(
                "EVERYTHING released with seeded randomness: the noise is "
                "reproducible by anyone who knows the seed"
            )
        return caveats

    def _receipt(self, source: str, records: list[FaceRecord], found: ImageFaces) -> dict[str, Any]:
        gen = self.generator
        min_px = found.min_face_px
        detection = {
            "detector": self.detector,
            "faces_found": len(records),
            "uncertain": sum(r.uncertain for r in records),
            "min_face_px": min_px,
            "rotations_tried": list(found.rotations_tried),
            "written_unchanged": not records,
            "may_have_missed": (
                "faces narrower than about "
                f"{min_px} px in this photo, and faces the detector does not recognise as "
                "faces (strongly turned, covered, drawn)"
                if min_px
                else "faces the detector does not recognise as faces (small, turned, covered)"
            ),
        }
        return {
            "schema": RECEIPT_SCHEMA,
            "source": source,
            "time": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
            "dpface_version": _version(),
            "seeded": self.seeded,
            "mechanism": self._mechanism_block(),
            "generator": None if gen is None else {"name": gen.name, "encoder": gen.encoder},
            "attribute_steering": None if self.steering is None else self.steering.describe(),
            "pseudonym": self.pseudonym,
            "head": self.head_settings(),
            "ledger": {"run_id": self.ledger.run_id, "composition": self.ledger.composition},
            "faces": [r.as_receipt() for r in records],
            "detection": detection,
            "detection_note": found.note,
            "not_protected": self._not_protected(any(r.linked for r in records)),
            "privacy_units": self._units_text(),
        }

    def _units_text(self) -> str:
        text = (
            "named faces are charged to the subject the caller named; a face nobody named is "
            "its own privacy unit keyed by a keyed digest of this photo (the same photo "
            "released again charges the same unit; other photos of that person are other "
            "units)"
        )
        if self.templates is not None:
            text += (
                "; unnamed faces that match a subject enrolled in the template store (raw face "
                "templates, trusted side) are charged to that subject instead"
            )
        return text

    # ------------------------------------------------------------------ video (dpface.video)
    def release_identity(
        self, subject: str, embedding: np.ndarray
    ) -> tuple[np.ndarray, int | None, str]:
        """ONE privatised identity for ``subject`` from ``embedding`` (any vector; the
        mechanism normalises it onto the unit sphere): charged, drawn and (with
        ``pseudonym="reuse"``) stored in one ledger transaction. Returns (identity, ledger
        event or None when a stored pseudonym was reused, "fresh draw" | "reused pseudonym").
        Raises ``BudgetExceeded`` (the refusal is recorded) or ``KeyError`` (no budget)."""
        if self.consumes != "embedding":
            raise TypeError(f"{self.mechanism_name} does not release identities")
        return self._privatise(_Unit(subject, subject, named=False), np.asarray(embedding))

    def charge_release(self, subject: str, mechanism: Mechanism | None = None) -> int:
        """Charge ``subject`` one release of ``mechanism`` (default: this anonymiser's) before
        any noise is drawn; the ledger event id. Raises ``BudgetExceeded`` or ``KeyError``."""
        return self.ledger.charge(subject, **self._release_args(mechanism)).id

    def fallback_mechanism(self, region: tuple[int, int, int, int]) -> DPPixelization:
        """The DP-Pix fallback this anonymiser uses for a face it cannot replace in
        ``region`` (cells sized so the region is ``fallback_cells`` cells across)."""
        return self._fallback_mechanism(region)

    def spent_by(self, subject: str) -> tuple[dict[str, float], float]:
        """({"epsilon", "delta"} spent, epsilon left) for ``subject`` in the ledger."""
        return self._spent(subject)

    def mechanism_block(self) -> dict[str, Any]:
        """The receipt's ``mechanism`` block (name, budget per release, guarantee, unit...)."""
        return self._mechanism_block()

    def subject_shown(self, name: str) -> str:
        """How a receipt shows the named subject ``name`` (the name, or a keyed digest with
        ``receipt_subjects="digest"``)."""
        if self.receipt_subjects == "name":
            return name
        return "subject:" + self.ledger.unit_digest(b"subject:" + name.encode())[:16]

    def anonymize_video(self, source: str | Path, dest: str | Path, **options: Any) -> VideoResult:
        """De-identify every face of a video file into ``dest``: one privatised identity per
        person-track, released once and reused on every frame. See
        :func:`dpface.video.anonymize_video` for the options (``audio``, ``detect_every``,
        ``subject``/``subjects``, ``link_tracks``, ``progress``...); needs PyAV
        (``pip install 'dpface[video]'``). With head protection each person's head box is
        released on every frame under ONE head release per person (docs/video.md)."""
        from .video import anonymize_video

        return anonymize_video(self, source, dest, **options)

    def _failed(self, source: str, error: str) -> AnonymizationResult:
        receipt = {
            "schema": RECEIPT_SCHEMA,
            "source": source,
            "error": error,
            "dpface_version": _version(),
            "seeded": self.seeded,
            "mechanism": self._mechanism_block(),
        }
        return AnonymizationResult(source, None, [], receipt, error=error)
