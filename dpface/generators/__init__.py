"""Stage III generators: (privatised identity, attribute channel) -> face, blended back.

* ``Generator``/``GeneratedFace``/``ChannelRecord`` (``base``): the interface and the record
  of which output channels the DP guarantee covers.
* ``SurrogateGenerator`` (``surrogate``): the offline CPU default (synthetic surrogate
  identities from ``bank``; classical warping and blending).
* ``OnnxFaceSwapGenerator`` (``onnx_swap``): adapter for learned face-swap models in ONNX form.

Submodules are imported on demand (``from dpface.generators.surrogate import ...``).
"""

from dpface.generators.base import (
    AttributeChannel,
    ChannelRecord,
    GeneratedFace,
    Generator,
)

__all__ = ["AttributeChannel", "ChannelRecord", "GeneratedFace", "Generator"]
