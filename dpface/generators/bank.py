"""The surrogate bank: synthetic identities for ``SurrogateGenerator``.

How the bank is built (once, on first use; cached under ``assets/.cache``; bit-identical on every
machine: torch runs on one thread while it is built):

1. **Contributors.** From the labelled sample faces (``dpface.models.samples``) keep faces
   that are large enough (jaw width >= ``MIN_CONTRIBUTOR_WIDTH`` px), near-frontal (nose tip
   within ``MAX_YAW`` inter-ocular distances of the eye midpoint after removing roll), in
   colour, fully inside the photo, and not on the ``EXCLUDED`` list (stage make-up, eyes
   closed: things that would carry over). One photo per person: faces with the same label,
   or that the generator's own encoders (MobileFace, FaceRes) call the same person, form one
   person; the most frontal photo represents it.
2. **Canonical textures.** Each contributor's face is warped piecewise-affinely through its
   468 FaceMesh points (dense correspondence; one fixed Delaunay mesh) onto the contributors'
   mean mesh in a 384×384 ArcFace-template frame, and its skin colour statistics are
   standardised to the pooled mean (Reinhard in Lab) so that no contributor dominates by
   contrast or lighting.
3. **Synthetic identities.** Triples of three different persons, at least two of them of
   the same apparent sex (FaceRes P(male) >= 0.5 or not), are averaged pixel-wise in the
   canonical frame: up to ``MAX_PER_GROUP`` per majority sex, each contributor used about
   equally often, in a fixed hash order (no random seed). Mixing in one person of the other
   sex gives the smaller group (few men among the samples) many more distinct averages. The
   apparent sex of a synthetic identity is its contributors' mean P(male) (FaceRes judges a
   render alone unreliably: it has no hair). No synthetic identity is a real person.
4. **Verification.** Each synthetic face (its canonical render) is embedded with *every*
   encoder available offline — MobileFace, FaceRes and dlib (plus ``arcface-onnx`` when the
   user passes a model path) — and compared with every photo of each of its contributors.
   A synthetic identity that any encoder matches to any contributor (similarity at or above
   that encoder's threshold, minus ``VERIFY_MARGIN`` for a safety margin) is dropped; the
   bank records how many each encoder rejected. dlib is used here only as a *verifier* of
   the finished averages (the issue asks for every encoder); it never enters generation.
5. **Selection embeddings.** The kept identities are embedded with the generator's encoder
   (MobileFace by default, FaceRes on request); the generator picks the synthetic identities
   nearest to the privatised embedding in that space.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from dpface.face import Face
from dpface.generators.refine import push_away
from dpface.generators.warp import (
    extend,
    fit_similarity,
    lab_to_rgb,
    polygon_mask,
    rgb_to_lab,
    triangulate,
    warp_piecewise,
)
from dpface.models.dlib_models import arcface_points

if TYPE_CHECKING:
    from dpface.models.samples import SampleFace

BANK_VERSION = 9
CANON = 384  # canonical frame side (ArcFace template scaled as insightface does for 384)
MIN_CONTRIBUTOR_WIDTH = 84.0
MAX_YAW = 0.22
VERIFY_MARGIN = 0.03
MAX_PER_GROUP = 24  # at most this many triples are tried per majority sex (deterministic order)
EXCLUDED = {
    "face-api-sample1.jpg#0": "stage make-up (painted tear drops) would carry over",
    "face-api-sample1.jpg#1": "stage make-up and eyes closed",
    "face-api-sample2.jpg#0": "looking down with eyes almost closed",
    "fr-obama_partial_face.jpg#0": "face cut by the photo border",
    "fr-obama_partial_face2.jpg#0": "face cut by the photo border",
}
_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def canonical_template(size: int = CANON) -> np.ndarray:
    """The ArcFace five-point template scaled to ``size`` (insightface's convention)."""
    if size % 112 == 0:
        return np.asarray(_ARCFACE_112 * (size / 112.0))
    ratio = size / 128.0
    return np.asarray(_ARCFACE_112 * ratio + np.array([8.0 * ratio, 0.0]))


def similarity_to_template(points5: np.ndarray, size: int = CANON) -> np.ndarray:
    """2×3 similarity transform (photo -> canonical frame), least squares on five points."""
    return fit_similarity(
        np.asarray(points5, dtype=np.float64).reshape(5, 2), canonical_template(size)
    )


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine to (n, 2) points."""
    p = np.asarray(pts, dtype=np.float64)
    return np.asarray(p @ m[:, :2].T + m[:, 2])


def yaw_ratio(lm68: np.ndarray) -> float:
    """Nose-tip offset from the eye midpoint along the eye line, in inter-ocular distances
    (0 for a frontal face; sign gives the turn direction)."""
    lm = np.asarray(lm68, dtype=np.float64)
    le, re = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    axis = re - le
    iod = float(np.linalg.norm(axis))
    return float(np.dot(lm[30] - (le + re) / 2.0, axis / max(iod, 1e-9)) / max(iod, 1e-9))


def _rendered_face(image: np.ndarray, lm68: np.ndarray) -> Face:
    """A rendered canonical image with known landmarks, as a :class:`~dpface.face.Face` for
    the encoders (its box is the landmarks' extent)."""
    box = (float(lm68[:, 0].min()), float(lm68[:, 1].min()))
    box2 = (float(lm68[:, 0].max()), float(lm68[:, 1].max()))
    return Face(image, (*box, *box2), lm68, detector="rendered")


@dataclass(frozen=True)
class SurrogateBank:
    """Synthetic identities in a common canonical frame.

    ``textures``: (K, 256, 256, 3) uint8 canonical renders (all in the mean shape);
    ``shapes``: (K, 68, 2) each identity's own canonical landmarks (its contributors' mean:
    the identity's face geometry); ``shape68``: the canonical mean landmarks; ``mesh``: the
    canonical mean FaceMesh (468 points); ``tri``: the fixed Delaunay triangles over it
    (textures correspond densely through them); ``embeddings``: encoder
    name -> (K, dim) unit selection embeddings; ``male``: the contributors' mean
    FaceRes P(male) (a render alone is judged unreliably: it has no hair);
    ``contributors``: their sample labels; ``report``: the verification log."""

    textures: np.ndarray = field(repr=False)
    shapes: np.ndarray = field(repr=False)
    shape68: np.ndarray = field(repr=False)
    mesh: np.ndarray = field(repr=False)
    tri: np.ndarray = field(repr=False)
    embeddings: dict[str, np.ndarray] = field(repr=False)
    male: np.ndarray = field(repr=False)
    contributors: tuple[tuple[str, ...], ...]
    report: dict[str, object] = field(repr=False)

    def __len__(self) -> int:
        return int(self.textures.shape[0])

    def face(self, k: int) -> Face:
        """Canonical render ``k`` as an encoder input."""
        return _rendered_face(self.textures[k], self.shape68)

    def without(self, labels: set[str]) -> SurrogateBank:
        """The bank minus every synthetic identity that any of ``labels`` (sample labels
        ``photo#index``) contributed to. For evaluation on the sample faces: the people a
        user anonymises are normally not bank contributors, and an average of three faces
        keeps some resemblance to each of them."""
        keep = [k for k, c in enumerate(self.contributors) if not labels.intersection(c)]
        if not keep:
            raise ValueError("no synthetic identity is left without these contributors")
        ix = np.array(keep)
        return replace(
            self,
            textures=self.textures[ix],
            shapes=self.shapes[ix],
            embeddings={k: v[ix] for k, v in self.embeddings.items()},
            male=self.male[ix],
            contributors=tuple(self.contributors[k] for k in keep),
        )

    def embedding(self, encoder: str) -> np.ndarray:
        """Selection embeddings under ``encoder`` (stored for mobileface and faceres)."""
        if encoder not in self.embeddings:
            raise KeyError(
                f"the surrogate bank has embeddings for {sorted(self.embeddings)}, not {encoder!r}"
            )
        return self.embeddings[encoder]


# ------------------------------------------------------------------------------- building


def face_mesh(img: np.ndarray, lm68: np.ndarray) -> np.ndarray:
    """(468, 2) FaceMesh landmarks (x, y) in photo pixels (a landmark model, not a
    recogniser), from a 192×192 crop that is rotated so the eyes are level (FaceMesh
    expects upright faces; a tilted head otherwise misplaces the mesh)."""
    return face_mesh_3d(img, lm68)[:, :2]


def face_mesh_3d(img: np.ndarray, lm68: np.ndarray) -> np.ndarray:
    """(468, 3) FaceMesh landmarks (x, y in photo pixels; z, FaceMesh's relative depth,
    in the same pixel scale), as ``face_mesh``."""
    import torch

    from dpface.models.tfjs_models import prepare, run

    lm = np.asarray(lm68, dtype=np.float64)
    d = lm[42:48].mean(axis=0) - lm[36:42].mean(axis=0)
    ang = float(np.arctan2(d[1], d[0]))
    c, s_ = np.cos(-ang), np.sin(-ang)
    rot = np.array([[c, -s_], [s_, c]])
    centre = lm.mean(axis=0)
    r = (lm - centre) @ rot.T
    mid = (r.min(axis=0) + r.max(axis=0)) / 2.0
    scale = 192.0 / (1.5 * float(np.ptp(r, axis=0).max()))
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = 96.0 - scale * (rot @ centre + mid)
    crop = cv2.warpAffine(
        img,
        m,
        (192, 192),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    with torch.no_grad():
        mesh = run("facemesh", prepare("facemesh", crop[None]))["mesh"].numpy()
    pts = mesh.reshape(468, 3).astype(np.float64)
    inv = cv2.invertAffineTransform(m)
    xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
    return np.concatenate([xy, pts[:, 2:3] / scale], axis=1)


def _canonical(
    img: np.ndarray, lm68: np.ndarray, mesh: np.ndarray, mean_mesh: np.ndarray, tri: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 canonical texture, inside-mesh mask): the FaceMesh part warped piecewise
    onto the mean mesh; outside it, the similarity-aligned photo."""
    m = similarity_to_template(arcface_points(lm68))
    base = cv2.warpAffine(
        img, m, (CANON, CANON), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    ).astype(np.float32)
    warped, inside = warp_piecewise(img, mesh, mean_mesh, tri, (CANON, CANON))
    out = np.where(inside[..., None], warped, base)
    return out.astype(np.float32), inside


def skin_weight(shape68: np.ndarray, size: int) -> np.ndarray:
    """Cheeks/nose/forehead-band mask in the canonical frame without eyes, brows and mouth."""
    hull = cv2.convexHull(extend(shape68).astype(np.float32)).reshape(-1, 2)
    w = polygon_mask((size, size), hull)
    for idx in (np.arange(36, 42), np.arange(42, 48), np.arange(48, 60)):
        pts = shape68[idx]
        c = pts.mean(axis=0)
        w -= polygon_mask((size, size), c + 1.6 * (pts - c))
    for idx in (np.arange(17, 22), np.arange(22, 27)):
        pts = shape68[idx]
        band = np.concatenate([pts + np.array([0.0, -6.0]), pts[::-1] + np.array([0.0, 8.0])])
        w -= polygon_mask((size, size), band)
    return np.asarray(np.clip(w, 0.0, 1.0))


def _standardise(
    tex: np.ndarray, weight: np.ndarray, target: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Reinhard colour standardisation in Lab on the skin weight."""
    lab = rgb_to_lab(tex)
    w = weight.reshape(-1) > 0.5
    px = lab.reshape(-1, 3)[w]
    mu, sd = px.mean(axis=0), px.std(axis=0) + 1e-3
    lab = (lab - mu) / sd * target[1] + target[0]
    return np.asarray(np.clip(lab_to_rgb(lab), 0, 255))


def _source_key() -> str:
    from dpface.models import store

    m = store.manifest()
    names = [
        *store.names("samples/"),
        "tfjs/mobileface.bin",
        "tfjs/faceres.bin",
        "dlib/dlib_face_recognition_resnet_model_v1.dat",
        "dlib/shape_predictor_68_face_landmarks.dat",
    ]
    payload = json.dumps(
        [
            BANK_VERSION,
            CANON,
            MIN_CONTRIBUTOR_WIDTH,
            MAX_YAW,
            VERIFY_MARGIN,
            MAX_PER_GROUP,
            sorted(EXCLUDED),
            [(n, m[n].sha256) for n in names],
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def bank_path() -> Path:
    """Where the built bank is cached (keyed by every input's hash and the build settings)."""
    from dpface.models import store

    return store.assets_dir() / ".cache" / f"surrogate-bank-{_source_key()}.npz"


def _label(f: SampleFace) -> str:
    return f"{f.photo}#{f.index}"


def select_contributors(
    faces: Sequence[SampleFace], sims: dict[str, np.ndarray], thresholds: dict[str, float]
) -> tuple[list[int], dict[str, str]]:
    """Indices of one representative photo per person, and why the others were left out."""
    why: dict[str, str] = {}
    ok: list[int] = []
    for i, f in enumerate(faces):
        lm = f.landmarks68
        img = f.image
        lab = _label(f)
        width = float(np.linalg.norm(lm[16] - lm[0]))
        h, w = img.shape[:2]
        if lab in EXCLUDED:
            why[lab] = EXCLUDED[lab]
        elif width < MIN_CONTRIBUTOR_WIDTH:
            why[lab] = f"face {width:.0f} px wide < {MIN_CONTRIBUTOR_WIDTH:.0f}"
        elif abs(yaw_ratio(lm)) > MAX_YAW:
            why[lab] = f"turned (yaw ratio {yaw_ratio(lm):+.2f})"
        elif lm.min() < 0.0 or lm[:, 0].max() >= w or lm[:, 1].max() >= h:
            why[lab] = "face cut by the photo border"
        else:
            ok.append(i)
    # one representative per person (label or either internal encoder says "same")
    ok.sort(key=lambda i: abs(yaw_ratio(faces[i].landmarks68)))
    chosen: list[int] = []
    for i in ok:
        dup = [
            j
            for j in chosen
            if faces[i].identity == faces[j].identity
            or (
                faces[i].photo != faces[j].photo
                and any(sims[e][i, j] >= thresholds[e] for e in sims)
            )
        ]
        if dup:
            why[_label(faces[i])] = (
                f"same person as {_label(faces[dup[0]])} (kept the more frontal)"
            )
        else:
            chosen.append(i)
    return sorted(chosen), why


def balanced_triples(
    combos: Sequence[tuple[int, ...]], names: Sequence[str], limit: int
) -> list[tuple[int, ...]]:
    """Up to ``limit`` of ``combos`` in which every member is used about equally often:
    greedily the combination whose members have been used least so far, ties broken by a
    hash of the members' names (a fixed order that needs no random seed and does not depend
    on the order of ``combos``)."""

    def key(c: tuple[int, ...]) -> str:
        return hashlib.sha256("+".join(sorted(names[m] for m in c)).encode()).hexdigest()

    left = sorted(combos, key=key)
    used: dict[int, int] = {}
    out: list[tuple[int, ...]] = []
    while left and len(out) < limit:
        best = min(
            range(len(left)),
            key=lambda j: (
                max(used.get(m, 0) for m in left[j]),
                sum(used.get(m, 0) for m in left[j]),
                j,
            ),
        )
        c = left.pop(best)
        out.append(c)
        for m in c:
            used[m] = used.get(m, 0) + 1
    return out


def majority_triples(is_male: Sequence[bool], male: bool) -> list[tuple[int, int, int]]:
    """Triples of different contributors with at least two of apparent sex ``male``
    (mixing in one of the other sex gives the smaller group many more distinct averages)."""
    return [
        c
        for c in itertools.combinations(range(len(is_male)), 3)
        if sum(is_male[k] == male for k in c) >= 2
    ]


def build_bank(verify_encoders: Sequence[str] = ("mobileface", "faceres", "dlib")) -> SurrogateBank:
    """Build the bank from the sample faces (see the module docstring); ~1-2 minutes.

    Torch runs on one thread meanwhile: the refinement's gradient steps amplify the
    rounding differences of multi-threaded reductions, and the bank must come out the same
    on every machine (it did not: textures differed by up to 47 grey levels between a
    1-thread and a 2-thread build)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_bank(verify_encoders)
    finally:
        torch.set_num_threads(threads)


def _build_bank(verify_encoders: Sequence[str]) -> SurrogateBank:
    from dpface.models.attributes import age_gender
    from dpface.models.encoders import get_encoder
    from dpface.models.samples import sample_faces

    faces = sample_faces()
    encoders = {name: get_encoder(name) for name in verify_encoders}
    emb = {name: enc.embed(faces) for name, enc in encoders.items()}
    internal: dict[str, np.ndarray] = {
        n: emb[n] @ emb[n].T for n in ("mobileface", "faceres") if n in emb
    }
    thresholds = {n: encoders[n].threshold for n in encoders}
    chosen, why = select_contributors(faces, internal, thresholds)
    _, p_male = age_gender([faces[i] for i in chosen])

    # mean shape in the canonical frame
    aligned = [
        apply_affine(similarity_to_template(faces[i].points5), faces[i].landmarks68) for i in chosen
    ]
    shape68 = np.mean(aligned, axis=0)
    meshes = [face_mesh(faces[i].image, faces[i].landmarks68) for i in chosen]
    mean_mesh = np.mean(
        [
            apply_affine(similarity_to_template(faces[i].points5), m)
            for i, m in zip(chosen, meshes, strict=True)
        ],
        axis=0,
    )
    tri = triangulate(mean_mesh)
    weight = skin_weight(shape68, CANON)
    textures = [
        _canonical(faces[i].image, faces[i].landmarks68, m, mean_mesh, tri)[0]
        for i, m in zip(chosen, meshes, strict=True)
    ]
    labs = [rgb_to_lab(t).reshape(-1, 3)[weight.reshape(-1) > 0.5] for t in textures]
    target = (
        np.mean([x.mean(axis=0) for x in labs], axis=0),
        np.mean([x.std(axis=0) for x in labs], axis=0),
    )
    textures = [_standardise(t, weight, target) for t in textures]

    is_male = [bool(p >= 0.5) for p in p_male]
    names = [_label(faces[i]) for i in chosen]
    kept_tex: list[np.ndarray] = []
    kept_shape: list[np.ndarray] = []
    kept_contrib: list[tuple[str, ...]] = []
    kept_male: list[float] = []
    rejected: dict[str, int] = {n: 0 for n in encoders}
    closest: dict[str, float] = {n: -1.0 for n in encoders}
    tried = refined = 0
    hull = cv2.convexHull(extend(shape68).astype(np.float32)).reshape(-1, 2)
    inner = cv2.GaussianBlur(polygon_mask((CANON, CANON), hull), (0, 0), 6.0)
    for male in (False, True):
        triples = balanced_triples(majority_triples(is_male, male), names, MAX_PER_GROUP)
        for tri3 in triples:
            tried += 1
            avg = np.mean([textures[k] for k in tri3], axis=0)
            people = {faces[chosen[k]].identity for k in tri3}
            photos = [j for j, f in enumerate(faces) if f.identity in people]
            render: np.ndarray = np.asarray(np.clip(np.round(avg), 0, 255), dtype=np.uint8)
            internal_ok = all(
                float(
                    np.max(emb[n][photos] @ encoders[n].embed([_rendered_face(render, shape68)])[0])
                )
                < encoders[n].threshold - VERIFY_MARGIN
                for n in ("mobileface", "faceres")
            )
            if not internal_ok:
                refined += 1
                render, _ = push_away(
                    avg, inner, {n: emb[n][photos] for n in ("mobileface", "faceres")}, thresholds
                )
            synth = _rendered_face(render, shape68)
            sim = {
                name: float(np.max(emb[name][photos] @ enc.embed([synth])[0]))
                for name, enc in encoders.items()
            }
            bad = False
            for name, enc in encoders.items():
                if sim[name] >= enc.threshold - VERIFY_MARGIN:
                    rejected[name] += 1
                    bad = True
            if not bad:
                for name in encoders:
                    closest[name] = max(closest[name], sim[name])
                kept_tex.append(render)
                kept_shape.append(np.mean([aligned[k] for k in tri3], axis=0))
                kept_contrib.append(tuple(names[k] for k in tri3))
                kept_male.append(float(np.mean([p_male[k] for k in tri3])))
    if not kept_tex:
        raise RuntimeError("no synthetic identity passed verification")
    tex = np.stack(kept_tex)
    selection = {}
    for name in ("mobileface", "faceres"):
        enc = encoders[name] if name in encoders else get_encoder(name)
        selection[name] = enc.embed([_rendered_face(t, shape68) for t in tex]).astype(np.float32)
    report: dict[str, object] = {
        "contributors": list(names),
        "left_out": why,
        "triples_tried": tried,
        "refined": refined,
        "kept": len(tex),
        "rejected_by": rejected,
        "max_similarity_of_a_kept_identity_to_a_contributor": closest,
        "thresholds": thresholds,
        "verify_margin": VERIFY_MARGIN,
    }
    return SurrogateBank(
        tex,
        np.stack(kept_shape),
        shape68,
        mean_mesh,
        tri,
        selection,
        np.array(kept_male),
        tuple(kept_contrib),
        report,
    )


def save_bank(bank: SurrogateBank, path: Path) -> None:
    """Write the bank atomically as .npz (report as JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npz")
    arrays: dict[str, np.ndarray] = {
        "textures": bank.textures,
        "shapes": bank.shapes,
        "shape68": bank.shape68,
        "mesh": bank.mesh,
        "tri": bank.tri,
        "male": bank.male,
        "contributors": np.array(json.dumps(bank.contributors)),
        "report": np.array(json.dumps(bank.report)),
        **{f"emb_{k}": v for k, v in bank.embeddings.items()},
    }
    np.savez_compressed(
        tmp,
        **arrays,  # type: ignore[arg-type]
    )
    tmp.replace(path)


def load_bank_file(path: Path) -> SurrogateBank:
    """Read a bank written by ``save_bank``."""
    with np.load(path, allow_pickle=False) as z:
        emb = {k.removeprefix("emb_"): z[k] for k in z.files if k.startswith("emb_")}
        return SurrogateBank(
            z["textures"],
            z["shapes"],
            z["shape68"],
            z["mesh"],
            z["tri"],
            emb,
            z["male"],
            tuple(tuple(c) for c in json.loads(str(z["contributors"]))),
            json.loads(str(z["report"])),
        )


@cache
def default_bank() -> SurrogateBank:
    """The bank built from the sample faces: read from the cache, or built (and cached) on
    first use."""
    p = bank_path()
    if p.is_file():
        return load_bank_file(p)
    bank = build_bank()
    save_bank(bank, p)
    return bank
