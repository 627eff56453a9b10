"""The generator interface: stage III of IdentityDP (book 002, ch. 5; SPEC §3).

A generator is a *frozen, data-independent* function

    (photo, one detected face, privatised identity embedding[, attribute channel])
        -> (photo with that face replaced, a record of which output channels derive from what)

Frozen means: no training on the data it is applied to, no hidden randomness, no state that
changes between calls. The same privatised embedding and the same input give the same output
bit for bit; if a generator needs randomness it must derive it deterministically from the
privatised embedding. Then everything the generator derives *only* from the privatised
embedding inherits the mechanism's guarantee by post-processing. Everything it copies or
derives from the raw photo (landmarks/geometry, skin, background, expression, ...) does not,
and ``ChannelRecord`` says so: callers put it in the privacy receipt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dpface.face import Face


@dataclass(frozen=True)
class AttributeChannel:
    """Optional attribute values a generator may condition on (e.g. ``{"male": 0.9}``).

    ``privatised=True`` only when every value came out of a DP mechanism (e.g. the
    k-anonymous attribute vote); then the channel is covered by post-processing. Raw
    estimates from the photo are allowed but are recorded as NOT covered."""

    values: Mapping[str, float]
    privatised: bool


@dataclass(frozen=True)
class ChannelRecord:
    """Which output channels derive from the privatised identity (covered by the DP
    guarantee, post-processing) and which come from the raw input (NOT covered)."""

    covered: tuple[str, ...]
    uncovered: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, list[str]]:
        """JSON-ready form for a receipt."""
        return {
            "covered": list(self.covered),
            "uncovered": list(self.uncovered),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class GeneratedFace:
    """The outcome for one face.

    ``status`` is ``"replaced"`` or ``"untouched"``; an untouched face is NOT de-identified
    and ``reason`` says why (the caller must then apply another protection or report it).
    ``image`` is always the full photo (unchanged when untouched). ``region`` is the
    (x0, y0, x1, y1) pixel box the generator may have changed; ``alpha`` the soft mask of
    the replacement inside that box and ``layer`` the replacement's own colours there (float,
    (h, w, 3), before blending), so that ``image[region] == round(alpha * layer + (1 - alpha)
    * photo[region])``; both None when untouched. Head protection (:mod:`dpface.head`) puts
    ``layer`` back over a released head through ``alpha``."""

    image: np.ndarray = field(repr=False)
    status: str
    channels: ChannelRecord
    reason: str | None = None
    region: tuple[int, int, int, int] | None = None
    alpha: np.ndarray | None = field(default=None, repr=False)
    layer: np.ndarray | None = field(default=None, repr=False)
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def replaced(self) -> bool:
        """True when the face was replaced."""
        return self.status == "replaced"


class Generator(ABC):
    """Stage III: (photo, face, privatised identity[, attributes]) -> replaced face.

    Subclasses declare the identity space they read (``encoder`` name and ``identity_dim``):
    the privatised embedding must come from that encoder through a mechanism."""

    name: str
    encoder: str
    identity_dim: int

    @abstractmethod
    def generate(
        self,
        image: np.ndarray,
        face: Face,
        identity: np.ndarray,
        attributes: AttributeChannel | None = None,
    ) -> GeneratedFace:
        """Replace one face. ``image``: RGB uint8 (H, W, 3), never modified in place;
        ``identity``: the PRIVATISED embedding (``identity_dim``,)."""

    def for_released_head(self) -> Generator:
        """The generator to use when the head around the face is released or masked instead of
        kept (:mod:`dpface.head`): one that needs none of the photo's pixels to blend into.
        Default: this generator unchanged."""
        return self

    def check_identity(self, identity: np.ndarray) -> np.ndarray:
        """The privatised embedding as a finite float64 vector of the right size."""
        v = np.asarray(identity, dtype=np.float64).reshape(-1)
        if v.shape != (self.identity_dim,):
            raise ValueError(
                f"{self.name} reads {self.identity_dim}-d {self.encoder}"
                f" identities; got shape {np.shape(identity)}"
            )
        if not np.all(np.isfinite(v)):
            raise ValueError("the privatised identity has non-finite values")
        return v

    def generate_all(
        self,
        image: np.ndarray,
        faces: Sequence[Face],
        identities: np.ndarray,
        attributes: Sequence[AttributeChannel | None] | None = None,
    ) -> tuple[np.ndarray, list[GeneratedFace]]:
        """Replace every face of one photo in turn (left to right as given); returns the
        final photo and one result per face (none is skipped silently)."""
        ids = np.asarray(identities, dtype=np.float64).reshape(len(faces), -1)
        attrs = list(attributes) if attributes is not None else [None] * len(faces)
        if len(attrs) != len(faces):
            raise ValueError("one attribute channel (or None) per face")
        out = check_image(image)
        results = []
        for face, ident, attr in zip(faces, ids, attrs, strict=True):
            res = self.generate(out, face, ident, attr)
            results.append(res)
            out = res.image
        return out, results


def check_image(image: np.ndarray) -> np.ndarray:
    """The photo as a contiguous RGB uint8 (H, W, 3) array (not copied when already so)."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(
            f"generators take RGB uint8 (H, W, 3) photos, got {a.dtype} {a.shape}"
            " (convert with dpface.models.images.array_to_rgb8)"
        )
    return np.ascontiguousarray(a)
