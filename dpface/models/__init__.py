"""Face models for dpface: the asset store, a TFJS graph interpreter in torch, dlib models.

Submodules are imported on demand so that importing ``dpface.models`` stays cheap.
"""
