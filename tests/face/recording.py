"""A real generator that keeps what passes through it (for the face tests)."""

from __future__ import annotations

import numpy as np

from dpface.face import Face
from dpface.generators.base import AttributeChannel, ChannelRecord, GeneratedFace, Generator
from dpface.generators.surrogate import SurrogateGenerator


class RecordingGenerator(Generator):
    """The real surrogate generator, keeping a copy of every identity it is handed (``seen``)
    and every result it returns (``results``); its head-protection variant records into the
    same lists."""

    def __init__(
        self,
        inner: SurrogateGenerator,
        seen: list[np.ndarray] | None = None,
        results: list[GeneratedFace] | None = None,
    ) -> None:
        self.inner = inner
        self.name, self.encoder, self.identity_dim = inner.name, inner.encoder, inner.identity_dim
        self.seen: list[np.ndarray] = [] if seen is None else seen
        self.results: list[GeneratedFace] = [] if results is None else results

    def channels(self, attributes: AttributeChannel | None = None) -> ChannelRecord:
        return self.inner.channels(attributes)

    def for_released_head(self) -> RecordingGenerator:
        return RecordingGenerator(self.inner.for_released_head(), self.seen, self.results)

    def generate(
        self,
        image: np.ndarray,
        face: Face,
        identity: np.ndarray,
        attributes: AttributeChannel | None = None,
    ) -> GeneratedFace:
        self.seen.append(np.array(identity, dtype=np.float64, copy=True))
        res = self.inner.generate(image, face, identity, attributes)
        self.results.append(res)
        return res
