"""The faces an evaluation runs on: the bundled sample faces (with identity labels) or the
faces found in a user's folder (identities unknown: each face is its own identity).

An ``EvalFace`` is small and picklable (a path, a box and landmarks), so it can be sent to
worker processes; the photo is read (and cached) where it is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class EvalFace:
    """One face to evaluate.

    ``key`` identifies the face across runs (hash of the photo file + position); ``identity``
    is the person's label; ``labelled`` is False when the label is only "this face" (a user
    folder), so no cross-photo identity claims are made for it; ``group`` marks faces whose
    cross-group pairs have an unknown answer (the sample's face-api photos)."""

    key: str
    source: str  # image file path
    index: int  # left-to-right position among the photo's faces
    identity: str
    box: tuple[float, float, float, float]
    landmarks68: np.ndarray = field(repr=False, compare=False)
    labelled: bool = True
    group: str = ""

    @property
    def image(self) -> np.ndarray:
        """The whole photo, RGB uint8 (read once per process)."""
        return load_image(self.source)

    @property
    def points5(self) -> np.ndarray:
        """The five ArcFace alignment points."""
        from dpface.models.dlib_models import arcface_points

        return arcface_points(self.landmarks68)

    @property
    def photo_key(self) -> str:
        """The photo this face is in: its file hash (plus the copy number of ``replicate``)."""
        digest, _, rest = self.key.partition("#")
        copy = rest.partition("~")[2]
        return f"{digest}~{copy}" if copy else digest

    @property
    def width(self) -> float:
        """Face box width in pixels."""
        return float(self.box[2] - self.box[0])


@lru_cache(maxsize=16)
def load_image(path: str) -> np.ndarray:
    """Read a photo as upright RGB uint8 (read-only array, cached)."""
    from dpface.models.images import load_rgb

    img = load_rgb(path)
    img.setflags(write=False)
    return img


@lru_cache(maxsize=256)
def file_hash(path: str) -> str:
    """sha256 of a file's bytes (hex, first 16 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def sample_faces() -> list[EvalFace]:
    """The bundled sample faces (34 faces of 29 people) with their identity labels."""
    from dpface.models import store
    from dpface.models.samples import sample_faces as _samples

    out = []
    for f in _samples():
        src = str(store.path("samples/" + f.photo))
        out.append(
            EvalFace(
                f"{file_hash(src)}#{f.index}",
                src,
                f.index,
                f.identity,
                f.box,
                np.asarray(f.landmarks68, dtype=np.float64),
                True,
                f.collection if f.collection == "face-api" else "",
            )
        )
    return out


def folder_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def folder_faces(folder: Path, detector: str = "hog") -> tuple[list[EvalFace], list[str]]:
    """Detect the faces in a user folder. Identities are unknown, so every face is labelled
    as its own identity. Returns the faces and one note per image that gave none."""
    from dpface.detect import detect_file

    faces: list[EvalFace] = []
    notes: list[str] = []
    files = folder_images(folder)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    for p in files:
        res = detect_file(p, detector=detector)
        if res.error:
            notes.append(f"{p}: {res.error}")
            continue
        if not res.faces:
            notes.append(f"{p}: {res.note or 'no face found'}")
            continue
        h = file_hash(str(p))
        for k, f in enumerate(res.faces):
            faces.append(
                EvalFace(
                    f"{h}#{k}",
                    str(p),
                    k,
                    f"{p.name}#{k}",
                    f.box,
                    np.asarray(f.landmarks68, dtype=np.float64),
                    False,
                )
            )
    return faces, notes


def replicate(faces: Sequence[EvalFace], n: int) -> list[EvalFace]:
    """``n`` faces by cycling through ``faces`` (copies get distinct keys; for benchmarks)."""
    out = []
    for k in range(n):
        f = faces[k % len(faces)]
        rep = k // len(faces)
        out.append(
            EvalFace(
                f"{f.key}~{rep}" if rep else f.key,
                f.source,
                f.index,
                f.identity,
                f.box,
                f.landmarks68,
                f.labelled,
                f.group,
            )
        )
    return out


def known_pairs(faces: Sequence[EvalFace]) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) boolean matrices (same person, answer known) over ``faces``.

    Known: same label among labelled faces; different people in one photo; faces of
    different groups or sources. Two faces from different photos of one sample group
    (face-api) are unknown, and unlabelled faces are only known to match themselves."""
    n = len(faces)
    same = np.zeros((n, n), dtype=bool)
    known = np.zeros((n, n), dtype=bool)
    for i, a in enumerate(faces):
        for j, b in enumerate(faces):
            if i == j or (a.source == b.source and a.index == b.index):
                same[i, j] = known[i, j] = True
            elif a.source == b.source:
                known[i, j] = True
            elif a.labelled and b.labelled:
                same[i, j] = a.identity == b.identity
                known[i, j] = same[i, j] or not (a.group and a.group == b.group)
    return same, known
