"""Contact sheet: sample faces (rows) and the generator's outputs at several epsilons
(columns), as 256-px loose face crops of the full output photo.

    dpface contact-sheet -o out/contact.png [--epsilons inf,6,1] [--faces 2,5,21]

(the command line lives in ``dpface.cli``; this module only builds the image).

Each face's MobileFace embedding is privatised with ``IdentityLaplace`` (seeded: the sheet is
reproducible; seeded randomness is for illustration only); ``inf`` means no noise (the
generator's worst case: the surrogate nearest to the true identity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from dpface.generators.base import AttributeChannel, Generator
from dpface.models.encoders import FaceLike

DEFAULT_FACES = (2, 5, 6, 10, 12, 15, 17, 19, 20, 21, 26, 27, 29, 33)
DEFAULT_EPS = (math.inf, 6.0, 2.0, 0.5)
TILE = 256


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.rectangle(out, (0, 0), (TILE, 22), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def sex_attributes(faces: Sequence[FaceLike], mode: str) -> list[AttributeChannel | None]:
    """Per face: None (``mode="none"``) or FaceRes's raw P(male) as a NOT privatised
    attribute channel (``mode="raw"``)."""
    if mode == "none":
        return [None] * len(faces)
    if mode != "raw":
        raise ValueError("sex channel must be 'raw' or 'none'")
    from dpface.models.attributes import age_gender

    _, male = age_gender(faces)
    return [AttributeChannel({"male": float(p)}, privatised=False) for p in male]


def contact_sheet(
    gen: Generator,
    faces_idx: Sequence[int] = DEFAULT_FACES,
    epsilons: Sequence[float] = DEFAULT_EPS,
    seed: int = 7,
    sex_channel: str = "raw",
) -> np.ndarray:
    """The sheet as an RGB uint8 array."""
    from dpface.align import loose_crop
    from dpface.models.encoders import get_encoder
    from dpface.models.samples import sample_faces
    from mechanisms.identity import IdentityLaplace

    faces = sample_faces()
    chosen = [faces[i] for i in faces_idx]
    emb = get_encoder(gen.encoder).embed(chosen)
    attrs = sex_attributes(chosen, sex_channel)
    rows = []
    for k, f in enumerate(chosen):
        tiles = [_label(loose_crop(f.image, f.landmarks68, TILE), f"input #{faces_idx[k]}")]
        for j, eps in enumerate(epsilons):
            if math.isinf(eps):
                priv = emb[k].astype(np.float64)
            else:
                mech = IdentityLaplace(epsilon=eps, dim=emb.shape[1], seed=seed + 1000 * j + k)
                priv = mech(emb[k])
            res = gen.generate(f.image, f, priv, attrs[k])
            tag = "no noise" if math.isinf(eps) else f"eps={eps:g}"
            sur = res.details.get("surrogates", [])
            tiles.append(
                _label(
                    loose_crop(res.image, f.landmarks68, TILE),
                    f"{tag} s{sur}" if res.replaced else f"{tag} untouched",
                )
            )
        rows.append(np.hstack(tiles))
    return np.vstack(rows)
