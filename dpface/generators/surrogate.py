"""``SurrogateGenerator``: the offline, CPU, classical-image-processing default generator.

Identity comes only from the privatised embedding: the generator picks the synthetic
identities of the surrogate bank (``dpface.generators.bank``) nearest to it in the encoder's
space (cosine; optionally restricted by an attribute channel ``{"male": p}``), mixes the top
``mix`` of them with softmax weights, and renders that identity into the photo:

1. shape (``dpface.generators.shape``): the photo's FaceMesh (468 points with depth) is
   decomposed into a 3-D head pose and a few clipped expression parameters per lip, eye and
   brow; the photo's own face shape is discarded. The face drawn is the bank's canonical
   mean mesh moved by the surrogate's own landmark offsets (× ``geometry``), animated by the
   expression parameters and posed by the pose;
2. texture: the surrogate's canonical texture (caricatured away from the bank's mean face by
   ``exaggerate``: lightness fully, colour up to ``exaggerate_colour``) is warped onto that
   mesh;
3. light and colour, in Lab: lightness = the surrogate's shading relative to its own mean
   skin lightness × a plane (the photo's skin-tone lightness and lighting direction: its
   robustly fitted lightness gradient across the face, quantised); colour = the photo's
   quantised mean skin colour + ``chroma_detail`` × the surrogate's colour around its mean
   (none on grey photos); eye interiors keep ``eye_chroma`` of it. Nothing else of the photo's
   shading or colour is read, except in a band along the region's edge (``seam_band``),
   where the photo's own low-frequency colour comes back so that no seam shows;
4. the photo's mouth interior (teeth; ``keep_mouth``) is moved onto the surrogate's lips;
   optionally its eye interiors (``keep_eyes``) and lips (``keep_lips``), off by default;
5. a feathered mask from the jaw (inside the photo's outline) to ``mask_lift`` above the
   brows blends the result in (optionally a Poisson blend); where FaceMesh ends, a little
   above the brows, the photo's own pixels continue under the mask.

Nothing is random and nothing depends on the raw identity: the same privatised embedding
and the same photo give the same output. FaceMesh (a landmark model) runs on the photo; no
identity model does, and dlib (the evaluation attacker) never runs here. The raw channels it
keeps (pose, expression, skin-tone class and lighting direction, the region's edge, the
mouth interior, everything outside the mask) are listed in every result's
``ChannelRecord``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from dpface.face import Face
from dpface.generators.bank import SurrogateBank, default_bank, face_mesh_3d
from dpface.generators.base import (
    AttributeChannel,
    ChannelRecord,
    GeneratedFace,
    Generator,
    check_image,
)
from dpface.generators.shape import PoseExpression, ShapeModel, interpolate_offsets
from dpface.generators.warp import (
    BROWS,
    INNER_LIPS,
    JAW,
    LEFT_EYE,
    OUTER_LIPS,
    RIGHT_EYE,
    extend,
    face_width,
    feather,
    fit_similarity,
    lab_to_rgb,
    masked_blur,
    polygon_mask,
    rgb_to_lab,
    up_vector,
    warp_piecewise,
)

RATIO_OFFSET = 8.0  # L* units added before the lightness ratio (keeps dark pixels stable)
GREY_CHROMA = 8.0  # median skin chroma (Lab a*b* radius) below which a photo counts as
# (partly) grey: the surrogate's colour detail is scaled down in proportion
HAIR_RATIO = 0.8  # outside the features, texture darker than this share of its skin is hair
MAX_LIGHT_GRADIENT = 30.0  # L* per face width: steeper fitted gradients are clipped
RATIO_RANGE = (0.45, 1.3)  # the surrogate's shading relative to its mean skin lightness
MIN_FACE_WIDTH = 24.0  # px; below this the 68 landmarks are too unreliable to warp onto


@dataclass(frozen=True)
class SurrogateSettings:
    """Tunable constants (fractions of the face width unless said otherwise)."""

    feather_sigma: float = 0.035  # soft edge of the replaced region
    mask_lift: float = 0.3  # top of the replaced region above the brows (share of the
    # nose-root-to-chin height)
    texture_edge: float = 0.015  # soft edge where the surrogate texture (FaceMesh) ends
    jaw_inset: float = 0.03  # the mask stays this far inside the jaw line (towards the nose)
    fine_sigma: float = 0.0  # finest band from the input (grain); 0 disables
    keep_eyes: bool = False  # keep the input's eye interiors (iris, sclera, gaze), moved to
    # the surrogate's eye shape; else the surrogate's eyes with desaturated colour
    eye_chroma: float = 0.3  # share of the surrogate's colour kept inside the eyes
    keep_mouth: bool = True  # keep the input's mouth interior (teeth), moved to the target
    keep_lips: bool = False  # keep the input's lip pixels (moved to the target lips)
    poisson: bool = False  # gradient-domain (Poisson) blend of the replaced region
    chroma_detail: float = 0.6  # share of the surrogate's colour detail (a*, b* around its
    # own mean skin colour) added to the photo's skin-tone class
    exaggerate: float = 1.0  # caricature of the surrogate texture away from the bank mean
    exaggerate_colour: float = 0.5  # at most this much caricature of the colour (a* b*-like)
    exaggerate_sigma: float = 0.0  # canonical px; >0: caricature only above this scale
    geometry: float = 1.5  # the surrogate's own shape offset from the mean shape, × this
    expression: float = 1.0  # share of the photo's expression parameters applied
    tone_step: tuple[float, float, float] = (4.0, 3.0, 3.0)  # skin-tone class: mean skin
    # L*, a*, b* of the photo quantised in these steps
    light_step: float = 4.0  # lighting direction: the photo's lightness gradient across
    # the face (L* per face width, horizontal and vertical) quantised in this step
    seam_band: float = 0.12  # near the region's edge the photo's own low-frequency colour
    # is restored over this band (no seam against the untouched skin around)
    own_outline: bool = False  # True: the jaw line and the replaced region follow the
    # surrogate's posed shape, not the photo's (for a head that is not kept)
    photo_fill: bool = True  # where the surrogate has no texture (upper forehead, hair
    # areas) the photo's own pixels, and the seam band; False: the skin-tone class lit by
    # the lighting direction there, and no seam band (for a head that is not kept)
    mix: int = 1  # how many nearest synthetic identities are mixed
    temperature: float = 0.02  # softmax temperature on cosine similarity when mixing


def usable_texture(textures: np.ndarray, shape68: np.ndarray) -> np.ndarray:
    """(K, S, S) float32 weights in [0, 1]: where each canonical surrogate texture may be
    used. Inside the inner features' hull (brows, eyes, nose, mouth) everywhere; outside it
    only where the lightness is at least ``HAIR_RATIO`` of the texture's median skin
    lightness: dark hair that an average drags over a temple or cheek would show as a
    smudge, so the input's own pixels stay there. "Inner features" are the eyes, brows,
    nose and mouth, each grown a little (not their hull: hair reaches the outer eye corners)."""
    size = textures.shape[1]
    core = np.zeros((size, size), dtype=np.float32)
    for part, grow in (
        (LEFT_EYE, 1.6),
        (RIGHT_EYE, 1.6),
        (OUTER_LIPS, 1.3),
        (np.arange(27, 36), 1.3),
        (np.arange(17, 22), 1.3),
        (np.arange(22, 27), 1.3),
    ):
        p = np.asarray(shape68[part], dtype=np.float32)
        hull = cv2.convexHull(p).reshape(-1, 2)
        c = hull.mean(axis=0)
        core = np.maximum(core, polygon_mask((size, size), c + grow * (hull - c)))
    core = np.asarray(cv2.GaussianBlur(core, (0, 0), 3.0), dtype=np.float32)
    out = np.empty(textures.shape[:3], dtype=np.float32)
    for k, tex in enumerate(textures):
        light = rgb_to_lab(tex)[..., 0]
        ref = float(np.median(light[core > 0.5]))
        ok = np.clip((light / max(ref, 1.0) - HAIR_RATIO) / 0.15, 0.0, 1.0).astype(np.float32)
        ok = np.asarray(cv2.GaussianBlur(ok, (0, 0), 2.0), dtype=np.float32)
        out[k] = np.maximum(core, ok)
    return out


def poisson_blend(src: np.ndarray, dst: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Seamless (Poisson) clone of ``src`` into ``dst`` (same size) over ``region`` > 0.5:
    inside, the gradients of ``src``; on the boundary, ``dst``. Returns float32 RGB."""
    h, w = region.shape
    mask = np.where(region > 0.5, 255, 0).astype(np.uint8)
    mask[:2, :] = 0
    mask[-2:, :] = 0
    mask[:, :2] = 0
    mask[:, -2:] = 0
    if mask.sum() == 0 or h < 8 or w < 8:
        return np.asarray(src, dtype=np.float32)
    x, y, bw, bh = cv2.boundingRect(mask)
    src8 = np.clip(np.round(src), 0, 255).astype(np.uint8)
    dst8 = np.ascontiguousarray(dst, dtype=np.uint8)
    # OpenCV 5's seamlessClone writes into its mask argument: always pass a copy
    out = cv2.seamlessClone(src8, dst8, mask.copy(), (x + bw // 2, y + bh // 2), cv2.NORMAL_CLONE)
    return np.asarray(out, dtype=np.float32)


class SurrogateGenerator(Generator):
    """Classical face replacement with synthetic surrogate identities (see module doc)."""

    name = "surrogate"

    def __init__(
        self,
        encoder: str = "mobileface",
        bank: SurrogateBank | None = None,
        settings: SurrogateSettings | None = None,
    ) -> None:
        if encoder == "dlib":
            raise ValueError(
                "dlib is the evaluation attacker and must not drive the generator;"
                " use mobileface or faceres"
            )
        self.bank = bank if bank is not None else default_bank()
        self.encoder = encoder
        self._emb = self.bank.embedding(encoder).astype(np.float64)
        self.identity_dim = int(self._emb.shape[1])
        self.settings = settings or SurrogateSettings()
        self._mean_texture = self.bank.textures.astype(np.float32).mean(axis=0)
        self._usable = usable_texture(self.bank.textures, self.bank.shape68)
        self._shape = canonical_shape_model(self.bank)

    def excluding(self, labels: set[str]) -> SurrogateGenerator:
        """This generator with the synthetic identities that ``labels`` contributed to
        removed from the choice (the caricature reference stays the full bank's mean).
        For evaluation only: generation must never depend on who the input is."""
        other = copy.copy(self)
        other.bank = self.bank.without(labels)
        other._emb = other.bank.embedding(self.encoder).astype(np.float64)
        other._usable = usable_texture(other.bank.textures, other.bank.shape68)
        return other

    def for_released_head(self) -> SurrogateGenerator:
        """This generator as head protection uses it (:mod:`dpface.head`): with the head
        around the face released or masked there is nothing of the photo to blend into, so
        none of the photo's pixels are used inside the mask either -- no photo fill where the
        surrogate has no texture, no seam band, no mouth interior -- and the jaw line and
        mask follow the surrogate's posed shape instead of the photo's outline."""
        other = copy.copy(self)
        other.settings = dataclasses.replace(
            self.settings, photo_fill=False, keep_mouth=False, own_outline=True
        )
        return other

    # ------------------------------------------------------------------ identity -> surrogate

    def choose(
        self, identity: np.ndarray, attributes: AttributeChannel | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bank indices, mixing weights, cosine similarities) for a privatised embedding."""
        v = self.check_identity(identity)
        n = float(np.linalg.norm(v))
        if n == 0.0:
            raise ValueError("the privatised identity is the zero vector")
        sims = self._emb @ (v / n)
        allowed = np.ones(len(sims), dtype=bool)
        if attributes is not None and "male" in attributes.values:
            want = float(attributes.values["male"]) >= 0.5
            match = (self.bank.male >= 0.5) == want
            if match.any():
                allowed = match
        cand = np.where(allowed)[0]
        # stable order: similarity, then index (ties cannot depend on anything else)
        order = cand[np.lexsort((cand, -sims[cand]))]
        top = order[: max(1, self.settings.mix)]
        z = (sims[top] - sims[top].max()) / max(self.settings.temperature, 1e-6)
        w = np.exp(z)
        return top, w / w.sum(), sims[top]

    def surrogate_texture(self, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The mixed canonical texture (float32 RGB)."""
        tex = self.bank.textures[idx].astype(np.float32)
        out = np.tensordot(weights.astype(np.float32), tex, axes=1)
        k = self.settings.exaggerate
        if k:
            # caricature: push the identity away from the bank's average face
            diff = out - self._mean_texture
            sig = self.settings.exaggerate_sigma
            if sig > 0:  # feature edges only, not broad shading (which looks like dirt)
                diff = diff - cv2.GaussianBlur(diff, (0, 0), sig)
            # lightness is caricatured fully, colour less (amplified colour reads as blotches)
            grey = diff.mean(axis=2, keepdims=True)
            kc = np.float32(min(k, self.settings.exaggerate_colour))
            out = out + np.float32(k) * grey + kc * (diff - grey)
        return np.asarray(out, dtype=np.float32)

    def identity_offset(self, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(468, 2) canonical-frame shape offset of the chosen surrogate: its own 68-point
        shape's offset from the mean shape (× ``geometry``), spread over the mesh."""
        off68 = np.tensordot(weights, self.bank.shapes[idx], axes=1) - self.bank.shape68
        sigma = 0.05 * float(np.ptp(self.bank.shape68[:, 0]))
        return self.settings.geometry * interpolate_offsets(
            self.bank.shape68, off68, self.bank.mesh, sigma
        )

    def target_mesh(
        self, mesh3d: np.ndarray, idx: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, PoseExpression]:
        """The face to render ((468, 2) photo pixels): the surrogate's shape with the
        photo's pose and expression only (``dpface.generators.shape``), and that channel."""
        pe = self._shape.decompose(mesh3d)
        if self.settings.expression != 1.0:
            pe = PoseExpression(
                pe.scale,
                pe.rotation,
                pe.translation,
                {k: v * self.settings.expression for k, v in pe.expression.items()},
            )
        return self._shape.compose(self.identity_offset(idx, weights), pe), pe

    # ------------------------------------------------------------------ record

    def channels(self, attributes: AttributeChannel | None = None) -> ChannelRecord:
        """What the output derives from."""
        s = self.settings
        covered = [
            "choice and mix of the synthetic surrogate identity (from the privatised"
            f" {self.encoder} embedding only)",
            "face shape inside the head outline: eyes, brows, nose, mouth and cheek shapes"
            " and placement (the surrogate's shape, posed and animated by the uncovered"
            " pose and expression parameters)",
            "inner-face appearance: the surrogate's lightness and colour (shading, skin"
            " detail, eyes, brows, lips)",
        ]
        uncovered = [
            "head pose: a 3-D similarity (scale, rotation, position; 7 numbers) fitted to"
            " the input's FaceMesh",
            "expression: per lip, eye and brow a few clipped shape parameters (mouth"
            " opening, width and curve; eye opening; brow raise, tilt and curve) from the"
            " input's FaceMesh",
            "lighting direction and skin-tone class: the input's mean skin colour"
            f" (L*, a*, b* in steps of {s.tone_step[0]:g}/{s.tone_step[1]:g}/"
            f"{s.tone_step[2]:g}) and its lightness gradient across the face (steps of"
            f" {s.light_step:g} L*)",
            "hair, ears, neck, background, clothing (outside the mask)",
            "face size and position (the detected landmarks place the mask)",
        ]
        if s.own_outline:
            covered.append(
                "face outline: the jaw and cheek line and the replaced region's edge follow"
                " the surrogate's posed shape"
            )
        else:
            uncovered.append("face outline: the input's jaw and cheek line (outside the mask)")
        if s.photo_fill:
            uncovered += [
                "the input's own low-frequency colour in a band along the edge of the"
                " replaced region (blends it into the untouched skin)",
                "the input's own pixels inside the mask where the surrogate texture ends"
                " (upper forehead) or would show hair",
            ]
        if s.fine_sigma > 0:
            uncovered.append("fine skin texture and image grain (finest band of the input)")
        if s.keep_eyes:
            uncovered.append("eye interiors: iris, sclera, gaze, eye state")
        if s.keep_mouth:
            uncovered.append("mouth interior: teeth, tongue (moved to the surrogate's lips)")
        if s.keep_lips:
            uncovered.append("lips: the input's lip pixels, moved to the surrogate's lip shape")
        if attributes is not None:
            names = ", ".join(sorted(attributes.values))
            (covered if attributes.privatised else uncovered).append(
                f"attribute channel ({names}) used to restrict the surrogate choice"
                + ("" if attributes.privatised else " (raw, not privatised)")
            )
        notes = (
            "synthetic identities are pixel averages of three different sample people,"
            " checked against their contributors; see dpface.generators.bank",
            "the raw channels can still carry identity: the evaluation measures what"
            " an attacker recovers from them",
        )
        return ChannelRecord(tuple(covered), tuple(uncovered), notes)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        image: np.ndarray,
        face: Face,
        identity: np.ndarray,
        attributes: AttributeChannel | None = None,
    ) -> GeneratedFace:
        """Replace one face (see the module docstring)."""
        img = check_image(image)
        record = self.channels(attributes)
        lm = np.asarray(face.landmarks68, dtype=np.float64)
        fw = face_width(lm)
        idx, w, sims = self.choose(identity, attributes)
        h_img, w_img = img.shape[:2]
        if fw < MIN_FACE_WIDTH:
            return GeneratedFace(
                img,
                "untouched",
                record,
                reason=(
                    f"face is {fw:.0f} px wide (< {MIN_FACE_WIDTH:.0f}): landmarks too "
                    "unreliable to synthesise a face; NOT de-identified, protect it another way "
                    "(e.g. DP-Pix)"
                ),
            )
        mesh3d = face_mesh_3d(img, lm)
        mesh_in = mesh3d[:, :2]
        mesh_t, pe = self.target_mesh(mesh3d, idx, w)
        target = lm + interpolate_offsets(mesh_in, mesh_t - mesh_in, lm, 0.03 * fw)
        if not self.settings.own_outline:
            target[JAW] = lm[JAW]  # the outline (and the mask's lower edge) stays the photo's
        pts = np.concatenate([extend(lm), extend(target), mesh_in, mesh_t])
        pad = 2.0 + 0.05 * fw
        x0 = int(max(0, np.floor(pts[:, 0].min() - pad)))
        y0 = int(max(0, np.floor(pts[:, 1].min() - pad)))
        x1 = int(min(w_img, np.ceil(pts[:, 0].max() + pad)))
        y1 = int(min(h_img, np.ceil(pts[:, 1].max() + pad)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return GeneratedFace(
                img,
                "untouched",
                record,
                reason=("face lies (almost) entirely outside the photo; NOT de-identified"),
            )
        crop = img[y0:y1, x0:x1]
        off = np.array([x0, y0], dtype=np.float64)
        usable = np.tensordot(w.astype(np.float32), self._usable[idx], axes=1)
        texture = np.dstack([self.surrogate_texture(idx, w), usable])
        out_crop, alpha, layer = self._replace(
            crop, lm - off, target - off, mesh_in - off, mesh_t - off, fw, texture
        )
        out = img.copy()
        out[y0:y1, x0:x1] = out_crop
        return GeneratedFace(
            out,
            "replaced",
            record,
            region=(x0, y0, x1, y1),
            alpha=alpha,
            layer=layer,
            details={
                "surrogates": idx.tolist(),
                "weights": w.tolist(),
                "similarities": sims.tolist(),
                "target_landmarks": target,
                "target_mesh": mesh_t,
                "pose_expression": pe.as_vector().tolist(),
            },
        )

    def _masks(
        self, shape: tuple[int, int], lm: np.ndarray, pts: np.ndarray, fw: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(replaced-region hard mask, skin weight for colour statistics, keep-input mask)."""
        s = self.settings
        centre = lm[30]
        jaw = lm[JAW] + s.jaw_inset * (centre - lm[JAW])
        # the mask's top edge sits ``mask_lift`` above the brows (its feathered edge must
        # clear them, or the input's and the surrogate's brows show through each other)
        u, h = up_vector(pts[:68])
        forehead = (pts[BROWS] + s.mask_lift * h * u)[::-1]
        region = polygon_mask(shape, np.concatenate([jaw, forehead]))
        holes = np.zeros(shape, dtype=np.float32)
        for part, grow in ((LEFT_EYE, 1.5), (RIGHT_EYE, 1.5), (np.arange(48, 60), 1.15)):
            p = lm[part]
            c = p.mean(axis=0)
            holes = np.maximum(holes, polygon_mask(shape, c + grow * (p - c)))
        for part in (np.arange(17, 22), np.arange(22, 27)):
            p = lm[part]
            holes = np.maximum(
                holes,
                polygon_mask(
                    shape,
                    np.concatenate(
                        [p - np.array([0.0, 0.03 * fw]), p[::-1] + np.array([0.0, 0.03 * fw])]
                    ),
                ),
            )
        skin = np.clip(region - holes, 0.0, 1.0)
        keep = np.zeros(shape, dtype=np.float32)
        if s.keep_eyes:
            for part in (LEFT_EYE, RIGHT_EYE):
                keep = np.maximum(keep, polygon_mask(shape, lm[part]))
        if s.keep_lips:
            outer = lm[OUTER_LIPS]
            c = outer.mean(axis=0)
            keep = np.maximum(keep, polygon_mask(shape, c + 1.05 * (outer - c)))
        if s.keep_mouth:
            inner = lm[INNER_LIPS]
            c = inner.mean(axis=0)
            keep = np.maximum(keep, polygon_mask(shape, c + 1.05 * (inner - c)))
        if keep.any():
            keep = np.asarray(
                cv2.GaussianBlur(keep, (0, 0), max(0.6, 0.006 * fw)), dtype=np.float32
            )
        return region, skin, keep

    def tone_and_light(
        self, lab: np.ndarray, skin: np.ndarray, lm: np.ndarray, fw: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The photo's skin-tone class and lighting direction: (mean skin L*, a*, b*
        quantised by ``tone_step``; L* gradient per face width along x and y quantised by
        ``light_step``). Nothing else of the photo's shading is read."""
        s = self.settings
        sel = skin > 0.5
        if int(sel.sum()) < 12:
            sel = skin > 0.0
        ys, xs = np.nonzero(sel)
        px = lab[ys, xs].astype(np.float64)
        u = (xs - lm[30, 0]) / fw
        v = (ys - lm[30, 1]) / fw
        a = np.stack([np.ones_like(u), u - u.mean(), v - v.mean()], axis=1)
        ok = np.ones(len(u), dtype=bool)
        coef = np.zeros(3)
        for _ in range(2):  # robust: hair, shadows and highlights over the skin do not count
            coef = np.linalg.lstsq(a[ok], px[ok, 0], rcond=None)[0]
            res = px[:, 0] - a @ coef
            spread = max(float(np.std(res[ok])), 1.0)
            ok = np.abs(res) <= 2.0 * spread
            if int(ok.sum()) < 12:
                ok = np.ones(len(u), dtype=bool)
        step = np.asarray(s.tone_step, dtype=np.float64)
        tone = np.round(np.array([coef[0], *px[ok, 1:].mean(axis=0)]) / step) * step
        grad = np.clip(coef[1:], -MAX_LIGHT_GRADIENT, MAX_LIGHT_GRADIENT)
        grad = np.round(grad / s.light_step) * s.light_step
        return tone, grad

    def _replace(
        self,
        crop: np.ndarray,
        lm_in: np.ndarray,
        lm: np.ndarray,
        mesh_in: np.ndarray,
        mesh_t: np.ndarray,
        fw: float,
        texture: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(blended crop, soft mask, the replacement's own colours before blending)."""
        s = self.settings
        shape = (crop.shape[0], crop.shape[1])
        pts_in = extend(lm_in)
        pts = np.concatenate([lm, pts_in[68:]])  # the forehead band stays where it was
        warped4, inside = warp_piecewise(texture, self.bank.mesh, mesh_t, self.bank.tri, shape)
        warped, usable = warped4[..., :3], warped4[..., 3] * inside
        region, skin, keep = self._masks(shape, lm, pts, fw)
        region_in, skin_in, _ = self._masks(shape, lm_in, pts_in, fw)
        if not s.own_outline:  # the photo's face is covered wherever it reaches
            region = np.maximum(region, region_in)
        skin *= inside.astype(np.float32)
        valid = feather(inside.astype(np.float32), max(0.6, s.texture_edge * fw))
        valid *= np.asarray(
            cv2.GaussianBlur(usable, (0, 0), max(0.6, s.texture_edge * fw)), dtype=np.float32
        )
        lab_in = rgb_to_lab(crop)
        lab_sur = rgb_to_lab(warped)
        tone, grad = self.tone_and_light(lab_in, skin_in, lm_in, fw)
        sel = skin > 0.5
        if not sel.any():
            sel = inside
        sur_mean = lab_sur[sel].mean(axis=0) if sel.any() else np.zeros(3, np.float32)
        # lighting: the surrogate's own shading relative to its mean skin lightness, times
        # the photo's skin-tone lightness with the photo's lighting direction (a gradient)
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        u = (xs - np.float32(lm_in[30, 0])) / np.float32(fw)
        v = (ys - np.float32(lm_in[30, 1])) / np.float32(fw)
        plane = np.float32(tone[0]) + np.float32(grad[0]) * u + np.float32(grad[1]) * v
        c = np.float32(RATIO_OFFSET)
        lab = np.empty_like(lab_in)
        ratio = (lab_sur[..., 0] + c) / (np.float32(sur_mean[0]) + c)
        lab[..., 0] = plane * np.clip(ratio, np.float32(RATIO_RANGE[0]), np.float32(RATIO_RANGE[1]))
        colourful = float(np.hypot(tone[1], tone[2]))
        cw = np.float32(s.chroma_detail * float(np.clip(colourful / GREY_CHROMA, 0.0, 1.0)))
        lab[..., 1:] = tone[1:].astype(np.float32) + cw * (lab_sur[..., 1:] - sur_mean[1:])
        eyes = np.zeros(shape, dtype=np.float32)
        for part in (LEFT_EYE, RIGHT_EYE):
            eyes = np.maximum(eyes, polygon_mask(shape, lm[part]))
        soft = np.asarray(cv2.GaussianBlur(eyes, (0, 0), max(0.6, 0.01 * fw)), dtype=np.float32)[
            ..., None
        ]
        # eye interiors: the surrogate's shading, desaturated (averaged or skin-toned
        # colour there reads as red or bloodshot eyes)
        lab[..., 1:] = lab[..., 1:] * (1.0 - soft * (1.0 - np.float32(s.eye_chroma)))
        if s.fine_sigma > 0:
            fs = max(0.5, s.fine_sigma * fw)
            lab = cv2.GaussianBlur(lab, (0, 0), fs) + lab_in - cv2.GaussianBlur(lab_in, (0, 0), fs)
        if not s.photo_fill:
            # where the surrogate has no texture: the skin-tone class lit by the lighting
            # direction, nothing of the photo's pixels; no seam band
            fill = np.dstack([plane, *(np.full(shape, np.float32(t)) for t in tone[1:])])
            lab = valid[..., None] * lab + (1.0 - valid[..., None]) * fill
        else:
            lab = valid[..., None] * lab + (1.0 - valid[..., None]) * lab_in
            # no seam: along the region's edge the photo's own low-frequency colour comes back
            band = max(1.0, s.seam_band * fw)
            hard = (region > 0.5).astype(np.uint8)
            dist = cv2.distanceTransform(hard, cv2.DIST_L2, 3)
            edge_w = np.clip(1.0 - dist / band, 0.0, 1.0).astype(np.float32)
            ring_w = skin_in * (edge_w > 0).astype(np.float32)
            if ring_w.sum() > 0:
                diff = masked_blur(lab_in - lab, ring_w, max(1.0, 0.5 * band))
                lab = lab + (edge_w**2)[..., None] * diff
        rgb = lab_to_rgb(lab)
        src = crop.astype(np.float32)
        if keep.any():
            moved, inside_in = warp_piecewise(crop, mesh_in, mesh_t, self.bank.tri, shape)
            kept = np.where(inside_in[..., None], moved, src)
            rgb = rgb * (1.0 - keep[..., None]) + kept * keep[..., None]
        if s.poisson:
            rgb = poisson_blend(rgb, crop, region)
        alpha = feather(region, max(0.8, s.feather_sigma * fw))
        out = src * (1.0 - alpha[..., None]) + rgb * alpha[..., None]
        return np.clip(np.round(out), 0, 255).astype(np.uint8), alpha, rgb.astype(np.float32)


def canonical_shape_model(bank: SurrogateBank) -> ShapeModel:
    """The bank's canonical mean mesh with FaceMesh depth (FaceMesh run once on the bank's
    mean texture, aligned onto the stored mean mesh) and its part membership."""
    mean = np.clip(np.round(bank.textures.astype(np.float32).mean(axis=0)), 0, 255)
    found = face_mesh_3d(mean.astype(np.uint8), bank.shape68)
    a = fit_similarity(found[:, :2], bank.mesh)
    scale = float(np.hypot(a[0, 0], a[1, 0]))
    z = found[:, 2:3] * scale
    mesh3d = np.concatenate([np.asarray(bank.mesh, dtype=np.float64), z - z.mean()], axis=1)
    return ShapeModel(mesh3d, bank.shape68, int(bank.textures.shape[1]))
