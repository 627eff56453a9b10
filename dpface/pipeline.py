"""The anonymiser a user calls: detect -> embed -> charge -> privatise -> generate -> receipt.

Two kinds of mechanism plug in:

* an **identity mechanism** (``IdentityLaplace``, ``IdentityGaussian``, ``IdentityVMF``): the
  face's identity embedding is privatised and a frozen generator draws a new face from it. The
  guarantee covers the identity channel (post-processing); the generator's record lists what it
  copies from the raw photo (geometry, skin, background...) and is NOT covered;
* an **image mechanism** (``DPPixelization``, ``DPBlur``): the face box is released with the
  m-pixel guarantee, no generator involved.

Every face is charged to its privacy unit in the ledger *before* any noise is drawn. If the
budget is refused, or the generator cannot replace a face (tiny, turned...), the face box is
covered by a flat grey mask instead -- a face is never returned unprotected -- and the receipt
says why. Output images carry no metadata (EXIF, GPS, ...) from the input.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mechanisms.base import Mechanism
from mechanisms.identity import IdentityGaussian, IdentityLaplace, IdentityVMF
from mechanisms.pixelization import DPBlur, DPPixelization

from .detect import Face, detect_array
from .generators.base import FaceInput, Generator
from .ledger import BudgetExceeded, Ledger, event_to_json
from .models.images import ImageError, array_to_rgb8, load_rgb
from .steering import AttributeSteering

__all__ = ["RECEIPT_SCHEMA", "AnonymizationResult", "Anonymizer", "FaceRecord"]

RECEIPT_SCHEMA = "dpface.receipt/1"
MASK_VALUE = 128
IdentityMechanism = IdentityLaplace | IdentityGaussian | IdentityVMF
ImageMechanism = DPPixelization | DPBlur
Pseudonym = Literal["fresh", "reuse"]
Linking = Literal["none", "match"]
LINK_ENCODER = "mobileface"  # encoder used to link faces when no generator names one


@dataclass(frozen=True)
class FaceRecord:
    """What happened to one detected face."""

    index: int
    box: tuple[int, int, int, int]
    subject: str
    status: str  # "replaced" | "pixelized" | "masked"
    reason: str | None = None
    ledger_event: int | None = None
    identity: str = "none"  # "fresh draw" | "reused pseudonym" | "none"
    spent: dict[str, float] | None = None
    remaining_epsilon: float | None = None
    channels: dict[str, list[str]] | None = None
    linked: str | None = None  # how an unnamed face was linked to an enrolled subject

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


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


class Anonymizer:
    """De-identify photos under a per-subject privacy budget, with a receipt for every face."""

    def __init__(
        self,
        *,
        mechanism: Mechanism,
        generator: Generator | None = None,
        ledger: Ledger | None = None,
        detector: str = "hog",
        pseudonym: Pseudonym = "fresh",
        link: Linking = "none",
        steering: AttributeSteering | None = None,
        encoder: Any = None,
    ) -> None:
        """``link="match"``: a named face is enrolled (its raw embedding kept in the ledger, on
        the trusted side) and later unnamed faces that match an enrolled subject are charged
        to that subject instead of being separate privacy units. ``steering`` fills the
        generator's attribute channel from an attribute mechanism (``dpface.steering``).
        ``encoder``: an identity encoder instance to embed faces with (default: looked up by
        the generator's encoder name); needed for encoders built from a path, such as
        ``get_encoder("arcface-onnx", model_path=...)``. Its name must be the generator's."""
        if encoder is not None and generator is not None and encoder.name != generator.encoder:
            raise ValueError(f"the generator reads {generator.encoder} identities but the "
                             f"encoder given is {encoder.name}")
        if isinstance(mechanism, (IdentityLaplace, IdentityGaussian, IdentityVMF)):
            if generator is None:
                raise ValueError(
                    "an identity mechanism needs a generator to turn the privatised identity "
                    "into a face (e.g. dpface.generators.SurrogateGenerator())"
                )
            if generator.identity_dim != mechanism.dim:
                raise ValueError(
                    f"the generator reads {generator.identity_dim}-d {generator.encoder} "
                    f"identities but the mechanism privatises {mechanism.dim}-d vectors"
                )
        elif isinstance(mechanism, (DPPixelization, DPBlur)):
            if generator is not None:
                raise ValueError("image mechanisms (DP-Pix, DP blur) do not use a generator")
        else:
            raise TypeError(
                f"{type(mechanism).__name__} is not a face mechanism: use IdentityLaplace, "
                "IdentityGaussian, IdentityVMF, DPPixelization or DPBlur"
            )
        if pseudonym not in ("fresh", "reuse"):
            raise ValueError("pseudonym must be 'fresh' or 'reuse'")
        if link not in ("none", "match"):
            raise ValueError("link must be 'none' or 'match'")
        if steering is not None and generator is None:
            raise ValueError("attribute steering needs a generator (an identity mechanism)")
        self.steering = steering
        self.link: Linking = link
        self.mechanism = mechanism
        self.generator = generator
        self.ledger = ledger if ledger is not None else Ledger(":memory:")
        self.detector = detector
        self.pseudonym: Pseudonym = pseudonym
        self._encoder: Any = encoder
        self._timings: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def mechanism_name(self) -> str:
        return type(self.mechanism).__name__

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

    def _pseudonym_key(self) -> str:
        assert self.generator is not None
        g = self.mechanism.guarantee
        return f"{self.mechanism_name}|{g.budget}|{self.generator.encoder}"

    def _charge(self, subject: str) -> tuple[int | None, str | None]:
        g = self.mechanism.guarantee
        try:
            charge = self.ledger.charge(
                subject,
                mechanism=self.mechanism_name,
                budget=g.budget,
                event=self.mechanism.event(),
                note=g.statement(),
            )
        except BudgetExceeded as err:
            return None, str(err)
        except KeyError as err:
            return None, str(err.args[0]) if err.args else str(err)
        return charge.id, None

    # ------------------------------------------------------------------ main entry
    def anonymize(
        self,
        image: str | Path | np.ndarray,
        *,
        subject: str | None = None,
        subjects: Sequence[str | None] | None = None,
    ) -> AnonymizationResult:
        """De-identify every face of one photo.

        ``subject`` names the person in a single-face photo; ``subjects`` names each face
        (left to right). A face without a name is its own privacy unit for this photo only:
        releases of that person in other photos are then NOT linked in the ledger.
        """
        source = str(image) if not isinstance(image, np.ndarray) else "<array>"
        self._timings = {}
        t = time.perf_counter()
        try:
            rgb = load_rgb(image) if not isinstance(image, np.ndarray) else array_to_rgb8(image)
        except (ImageError, OSError) as err:
            return self._failed(source, f"could not read the image: {err}")
        t = self._tick("read", t)
        found = detect_array(rgb, source=source, detector=self.detector)
        t = self._tick("detect", t)
        if not found.ok:
            return self._failed(source, found.error or "detection failed")
        faces = found.faces
        embeddings: np.ndarray | None = None
        if faces and (self.generator is not None or self.link == "match"):
            embeddings = self._encoder_for().embed(faces)
            t = self._tick("embed", t)
        named = self._names(faces, subject, subjects)
        if isinstance(named, str):
            return self._failed(source, named)
        names, links = self._linked(named, embeddings)
        out = rgb.copy()
        records: list[FaceRecord] = []
        if isinstance(self.mechanism, (DPPixelization, DPBlur)):
            for i, (face, name) in enumerate(zip(faces, names, strict=True)):
                out, rec = self._pixelize_face(out, face, i, name)
                records.append(rec)
        else:
            assert embeddings is not None or not faces
            out, records = self._replace_faces(out, faces, names, embeddings)
        records = [
            r if links[r.index] is None else FaceRecord(**{**r.__dict__, "linked": links[r.index]})
            for r in records
        ]
        receipt = self._receipt(source, records, found.note)
        return AnonymizationResult(source, out, records, receipt, timings=dict(self._timings))

    def _linked(
        self, names: list[str], embeddings: np.ndarray | None
    ) -> tuple[list[str], list[str | None]]:
        """With ``link="match"``: enrol named faces, link unnamed ones to enrolled subjects."""
        links: list[str | None] = [None] * len(names)
        if self.link != "match" or embeddings is None:
            return names, links
        t = time.perf_counter()
        enc = self._encoder_for()
        out = list(names)
        for i, (name, emb) in enumerate(zip(names, embeddings, strict=True)):
            if not name.startswith("unlinked:"):
                self.ledger.enroll(name, enc.name, emb)
                continue
            hit = self.ledger.match(enc.name, emb, enc.threshold)
            if hit is not None:
                out[i] = hit[0]
                links[i] = (
                    f"matched to enrolled subject on the trusted side ({enc.name} cosine "
                    f"{hit[1]:.3f} >= {enc.threshold})"
                )
        self._tick("link", t)
        return out, links

    def _names(
        self, faces: list[Face], subject: str | None, subjects: Sequence[str | None] | None
    ) -> list[str] | str:
        if subject is not None and subjects is not None:
            raise ValueError("pass subject= or subjects=, not both")
        if subject is not None:
            if len(faces) > 1:
                return (
                    f"subject={subject!r} names one person but the photo has {len(faces)} "
                    "faces: pass subjects=[...] (left to right) instead"
                )
            subjects = [subject] * len(faces)
        if subjects is not None and len(subjects) != len(faces):
            return f"{len(subjects)} subject names for {len(faces)} detected faces"
        run = uuid.uuid4().hex[:12]
        names = []
        for i in range(len(faces)):
            given = subjects[i] if subjects is not None else None
            names.append(given if given else f"unlinked:{run}:face{i}")
        return names

    def _mask(self, img: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = region
        img[y0:y1, x0:x1] = MASK_VALUE
        return img

    def _spent(self, subject: str) -> tuple[dict[str, float], float]:
        s = self.ledger.spent(subject)
        return {"epsilon": s.epsilon, "delta": s.delta}, self.ledger.remaining(subject)

    def _pixelize_face(
        self, img: np.ndarray, face: Face, index: int, subject: str
    ) -> tuple[np.ndarray, FaceRecord]:
        region = _face_region(face, img.shape)
        t = time.perf_counter()
        event_id, refused = self._charge(subject)
        t = self._tick("charge", t)
        if refused is not None:
            rec = FaceRecord(index, region, subject, "masked", reason=f"budget refused: {refused}")
            return self._mask(img, region), rec
        x0, y0, x1, y1 = region
        mech = self.mechanism
        assert isinstance(mech, (DPPixelization, DPBlur))
        out = np.asarray(mech(img, (x0, y0, x1, y1)))
        self._tick("privatise", t)
        spent, left = self._spent(subject)
        rec = FaceRecord(
            index,
            region,
            subject,
            "pixelized",
            ledger_event=event_id,
            spent=spent,
            remaining_epsilon=left,
            channels={
                "covered": ["pixels of the face box (m-pixel unit)"],
                "uncovered": [
                    "everything outside the face box",
                    "the position and size of the box",
                ],
                "notes": [],
            },
        )
        return out, rec

    def _replace_faces(
        self, img: np.ndarray, faces: list[Face], names: list[str], embeddings: np.ndarray | None
    ) -> tuple[np.ndarray, list[FaceRecord]]:
        assert self.generator is not None
        mech = self.mechanism
        assert isinstance(mech, (IdentityLaplace, IdentityGaussian, IdentityVMF))
        records: list[FaceRecord] = []
        if not faces or embeddings is None:
            return img, records
        key = self._pseudonym_key()
        for i, (face, name, emb) in enumerate(zip(faces, names, embeddings, strict=True)):
            region = _face_region(face, img.shape)
            stored = None
            if self.pseudonym == "reuse" and not name.startswith("unlinked:"):
                stored = self.ledger.pseudonym(name, key)
            event_id = None
            if stored is not None:
                private, how = stored, "reused pseudonym"
            else:
                t = time.perf_counter()
                event_id, refused = self._charge(name)
                t = self._tick("charge", t)
                if refused is not None:
                    records.append(
                        FaceRecord(i, region, name, "masked", reason=f"budget refused: {refused}")
                    )
                    img = self._mask(img, region)
                    continue
                private, how = np.asarray(mech(emb.astype(np.float64))), "fresh draw"
                if self.pseudonym == "reuse" and not name.startswith("unlinked:"):
                    self.ledger.store_pseudonym(name, key, private)
                self._tick("privatise", t)
            channel, steer_note = None, None
            if self.steering is not None:
                t = time.perf_counter()
                steered = self.steering.steer(
                    subject=name, embedding=emb, face=face, ledger=self.ledger
                )
                channel, steer_note = steered.channel, steered.refused or steered.note
                self._tick("steer", t)
            t = time.perf_counter()
            result = self.generator.generate(img, FaceInput.of(face), private, channel)
            self._tick("generate", t)
            spent, left = self._spent(name)
            if result.replaced:
                img = result.image
                records.append(
                    FaceRecord(
                        i,
                        region,
                        name,
                        "replaced",
                        ledger_event=event_id,
                        identity=how,
                        spent=spent,
                        remaining_epsilon=left,
                        channels=_with_note(result.channels.as_dict(), steer_note),
                    )
                )
            else:
                img = self._mask(img, region)
                records.append(
                    FaceRecord(
                        i,
                        region,
                        name,
                        "masked",
                        reason=f"generator could not replace it: {result.reason}",
                        ledger_event=event_id,
                        identity=how,
                        spent=spent,
                        remaining_epsilon=left,
                    )
                )
        return img, records

    # ------------------------------------------------------------------ receipts
    def _mechanism_block(self) -> dict[str, Any]:
        g = self.mechanism.guarantee
        return {
            "name": self.mechanism_name,
            "budget_per_release": str(g.budget),
            "guarantee": g.statement(),
            "privacy_unit": g.privacy_unit,
            "neighbouring": g.neighbouring,
            "is_dp": g.is_dp,
            "dp_event": json.loads(event_to_json(self.mechanism.event())),
            "randomness": "seeded (reproducible, NOT private)"
            if self.mechanism.seeded
            else "CSPRNG (AES-CTR keyed from the OS)",
        }

    def _receipt(self, source: str, records: list[FaceRecord], note: str | None) -> dict[str, Any]:
        gen = self.generator
        return {
            "schema": RECEIPT_SCHEMA,
            "source": source,
            "time": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
            "mechanism": self._mechanism_block(),
            "generator": None if gen is None else {"name": gen.name, "encoder": gen.encoder},
            "attribute_steering": None if self.steering is None else self.steering.describe(),
            "pseudonym": self.pseudonym,
            "ledger": str(self.ledger.path),
            "faces": [r.as_dict() for r in records],
            "detection_note": note,
            "not_protected": [
                "faces the detector missed (see detection_note)",
                "everything outside the replaced face regions",
                "metadata is dropped from written images; in-memory arrays carry none",
            ],
            "linking": self._linking_text(),
        }

    def _linking_text(self) -> str:
        base = "named subjects are linked by the caller, on the trusted side; "
        if self.link == "match":
            return base + (
                "unnamed faces are matched against enrolled subjects' raw face templates kept in "
                f"the ledger ({self._encoder_for().name}), on the trusted side; an unmatched face "
                "is its own privacy unit for this photo only"
            )
        return base + "faces without a name are separate privacy units (not linked across photos)"

    def _failed(self, source: str, error: str) -> AnonymizationResult:
        receipt = {
            "schema": RECEIPT_SCHEMA,
            "source": source,
            "error": error,
            "mechanism": self._mechanism_block(),
        }
        return AnonymizationResult(source, None, [], receipt, error=error)
