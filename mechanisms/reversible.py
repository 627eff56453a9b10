"""Password-recoverable concealment of an image region: pseudonymisation, NOT differential privacy.

:class:`ReversiblePseudonymizer` replaces a region of an image by a concealed version (a flat fill
by default, or any masker such as :class:`~mechanisms.pixelization.DPPixelization`) and returns a
*token*: the original region encrypted with an AEAD (AES-256-GCM) under a key derived from a
password by a slow, memory-hard KDF (Argon2id by default, scrypt as an alternative; random 16-byte
salt, random 12-byte nonce, all parameters in a versioned header). The right password restores the
original image bit-exactly; a wrong password, or any change to the token (header, metadata,
ciphertext) or to the protected image, raises a :class:`RecoveryError`.

This is pseudonymisation: whoever holds the password gets the face back, so it carries no epsilon
and no privacy budget -- never account it as DP. What an attacker without the password learns, and
why the scheme is sound, is in ``proofs/reversible.md``. If the masker is itself a DP mechanism,
its guarantee covers the protected image only against someone who has neither the token nor the
password.

Token layout (version 1, integers big-endian)::

    magic b"DPFR" | version u8 | kdf id u8 (1 scrypt, 2 argon2id) | 3 x u32 kdf parameters
    | salt (16) | nonce (12) | metadata length u32 | metadata (UTF-8 JSON) | ciphertext + tag (16)

The whole header (everything before the ciphertext) is the AEAD's associated data, so it is
authenticated together with the ciphertext.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import DpfaceError
from .pixelization import Box, clip_box

__all__ = [
    "AuthenticationError",
    "ImageMismatchError",
    "KdfParams",
    "RecoveryError",
    "ReversiblePseudonymizer",
    "TokenFormatError",
    "TokenInfo",
    "read_token_info",
]

Array = npt.NDArray[Any]
Masker = Callable[[Array, Box], Array]
KdfName = Literal["scrypt", "argon2id"]

MAGIC = b"DPFR"
VERSION = 1
SALT_BYTES = 16
NONCE_BYTES = 12
KEY_BYTES = 32
TAG_BYTES = 16
AEAD_NAME = "AES-256-GCM"
_KDF_IDS: dict[str, int] = {"scrypt": 1, "argon2id": 2}
_KDF_NAMES = {v: k for k, v in _KDF_IDS.items()}
_FIXED = struct.Struct(">4sBB3I")
_META_LEN = struct.Struct(">I")
_MAX_META = 1 << 16
STATEMENT = (
    "reversible pseudonymisation (NOT differential privacy): the region is recoverable by anyone "
    "holding the password; no epsilon, no privacy budget"
)

# Refused when reading a token, so a forged header cannot make recovery burn unbounded memory/time.
_MAX_SCRYPT_LOG2_N = 22
_MAX_SCRYPT_R = 32
_MAX_SCRYPT_P = 16
_MAX_SCRYPT_MEMORY = 2 << 30  # 128 * r * N bytes
_MAX_ARGON_MEMORY_KIB = 4 << 20  # 4 GiB
_MAX_ARGON_ITERATIONS = 64
_MAX_ARGON_LANES = 64


class RecoveryError(DpfaceError, ValueError):
    """Recovery failed: nothing is returned. See the subclasses for why."""


class TokenFormatError(RecoveryError):
    """The bytes are not a well-formed token of a supported version (truncated, corrupted...)."""


class AuthenticationError(RecoveryError):
    """The AEAD tag did not verify: wrong password, or the token was altered."""


class ImageMismatchError(RecoveryError):
    """The protected image is not the one this token was sealed with (edited, re-encoded...)."""


@dataclass(frozen=True)
class KdfParams:
    """Password-hashing parameters, written into the token header.

    ``scrypt``: a, b, c = log2(N), r, p. ``argon2id``: a, b, c = iterations, lanes, memory (KiB).
    """

    name: KdfName
    a: int
    b: int
    c: int

    @classmethod
    def argon2id(
        cls, *, iterations: int = 3, lanes: int = 4, memory_kib: int = 64 * 1024
    ) -> KdfParams:
        """Argon2id; defaults are RFC 9106's second recommended option (t=3, p=4, 64 MiB)."""
        return cls("argon2id", iterations, lanes, memory_kib)

    @classmethod
    def scrypt(cls, *, log2_n: int = 17, r: int = 8, p: int = 1) -> KdfParams:
        """scrypt; defaults N = 2^17, r = 8, p = 1 (128 MiB, the common interactive setting)."""
        return cls("scrypt", log2_n, r, p)

    def check(self) -> None:
        """Refuse malformed parameters and ones too costly to honour (denial-of-service guard)."""
        for field, v in (("a", self.a), ("b", self.b), ("c", self.c)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**32:
                raise ValueError(f"KDF parameter {field} must be an int in [1, 2^32), got {v!r}")
        if self.name == "scrypt":
            if not (1 <= self.a <= _MAX_SCRYPT_LOG2_N and self.b <= _MAX_SCRYPT_R):
                raise ValueError(f"scrypt parameters out of range: {self}")
            if self.c > _MAX_SCRYPT_P or 128 * self.b * (1 << self.a) > _MAX_SCRYPT_MEMORY:
                raise ValueError(f"scrypt parameters out of range: {self}")
        elif self.name == "argon2id":
            if self.a > _MAX_ARGON_ITERATIONS or self.b > _MAX_ARGON_LANES:
                raise ValueError(f"argon2id parameters out of range: {self}")
            if not 8 * self.b <= self.c <= _MAX_ARGON_MEMORY_KIB:
                raise ValueError(
                    f"argon2id memory must lie in [8 * lanes, {_MAX_ARGON_MEMORY_KIB}] KiB: {self}"
                )
        else:
            raise ValueError(f"unknown KDF {self.name!r}; use 'argon2id' or 'scrypt'")

    @property
    def recommended(self) -> bool:
        """True when at least as costly as the defaults (what a real deployment should use)."""
        if self.name == "scrypt":
            return self.a >= 17 and self.b >= 8
        return self.a >= 3 and self.c >= 64 * 1024

    def derive(self, password: bytes, salt: bytes) -> bytes:
        """The 256-bit AEAD key for ``password`` and ``salt``."""
        self.check()
        if self.name == "scrypt":
            return Scrypt(salt=salt, length=KEY_BYTES, n=1 << self.a, r=self.b, p=self.c).derive(
                password
            )
        return Argon2id(
            salt=salt, length=KEY_BYTES, iterations=self.a, lanes=self.b, memory_cost=self.c
        ).derive(password)

    def describe(self) -> dict[str, int | str]:
        if self.name == "scrypt":
            return {"kdf": "scrypt", "N": 1 << self.a, "r": self.b, "p": self.c}
        return {"kdf": "argon2id", "iterations": self.a, "lanes": self.b, "memory_kib": self.c}


@dataclass(frozen=True)
class TokenInfo:
    """What a token's header says (readable without the password; authenticated on recovery)."""

    version: int
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    shape: tuple[int, ...]
    dtype: str
    box: Box
    protected_sha256: str
    aead: str
    scheme: str
    ciphertext_length: int


def _password_bytes(password: str | bytes) -> bytes:
    if isinstance(password, str):
        data = unicodedata.normalize("NFC", password).encode("utf-8")
    elif isinstance(password, (bytes, bytearray)):
        data = bytes(password)
    else:
        raise TypeError(f"password must be str or bytes, got {type(password).__name__}")
    if not data:
        raise ValueError("password must not be empty")
    return data


def _check_image(image: npt.ArrayLike) -> Array:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W) or (H, W, channels), got {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"image must be a boolean, integer or float array, got dtype {arr.dtype}")
    return arr


def _digest(image: Array) -> str:
    h = hashlib.sha256()
    h.update(repr((image.shape, image.dtype.str)).encode("ascii"))
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _parse(token: bytes) -> tuple[TokenInfo, bytes, bytes]:
    """(info, header = associated data, ciphertext) or TokenFormatError."""
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise TypeError(f"token must be bytes, got {type(token).__name__}")
    data = bytes(token)
    head_len = _FIXED.size + SALT_BYTES + NONCE_BYTES + _META_LEN.size
    if len(data) < head_len + TAG_BYTES:
        raise TokenFormatError("token is truncated")
    magic, version, kdf_id, a, b, c = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise TokenFormatError("not a dpface reversible-pseudonymisation token (bad magic)")
    if version != VERSION:
        raise TokenFormatError(
            f"unsupported token version {version} (this library reads {VERSION})"
        )
    if kdf_id not in _KDF_NAMES:
        raise TokenFormatError(f"unknown KDF id {kdf_id}")
    name: KdfName = "scrypt" if _KDF_NAMES[kdf_id] == "scrypt" else "argon2id"
    kdf = KdfParams(name, a, b, c)
    try:
        kdf.check()
    except ValueError as exc:
        raise TokenFormatError(f"token KDF parameters refused: {exc}") from exc
    pos = _FIXED.size
    salt = data[pos : pos + SALT_BYTES]
    pos += SALT_BYTES
    nonce = data[pos : pos + NONCE_BYTES]
    pos += NONCE_BYTES
    (meta_len,) = _META_LEN.unpack_from(data, pos)
    pos += _META_LEN.size
    if meta_len > _MAX_META or len(data) < pos + meta_len + TAG_BYTES:
        raise TokenFormatError("token metadata length is inconsistent")
    try:
        meta = json.loads(data[pos : pos + meta_len].decode("utf-8"))
        shape = tuple(int(v) for v in meta["shape"])
        dtype = np.dtype(str(meta["dtype"]))
        bx = [int(v) for v in meta["box"]]
        box: Box = (bx[0], bx[1], bx[2], bx[3])
        digest = str(meta["protected_sha256"])
        aead, scheme = str(meta["aead"]), str(meta["scheme"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise TokenFormatError(f"token metadata is malformed: {exc}") from exc
    pos += meta_len
    info = TokenInfo(
        version=version,
        kdf=kdf,
        salt=salt,
        nonce=nonce,
        shape=shape,
        dtype=dtype.str,
        box=box,
        protected_sha256=digest,
        aead=aead,
        scheme=scheme,
        ciphertext_length=len(data) - pos,
    )
    return info, data[:pos], data[pos:]


def read_token_info(token: bytes) -> TokenInfo:
    """The header of a token, without the password (not yet authenticated: recovery checks it)."""
    return _parse(token)[0]


class ReversiblePseudonymizer:
    """Conceal a region and keep it recoverable with a password. Pseudonymisation, NOT DP.

    ``seal`` returns the concealed image and a token holding the original region under AES-256-GCM
    with a key from a slow KDF; ``recover`` restores the original bit-exactly or raises a
    :class:`RecoveryError`. There is no epsilon: anyone with the password (or who guesses it)
    gets the original back. ``masker(image, box) -> image`` conceals the region (default: fill it
    with ``fill``); it must not change pixels outside the box.
    """

    statement = STATEMENT

    def __init__(
        self,
        *,
        kdf: KdfParams | None = None,
        masker: Masker | None = None,
        fill: float = 0,
        allow_weak_kdf: bool = False,
    ) -> None:
        params = KdfParams.argon2id() if kdf is None else kdf
        if not isinstance(params, KdfParams):
            raise TypeError(f"kdf must be a KdfParams, got {type(params).__name__}")
        params.check()
        if not params.recommended and not allow_weak_kdf:
            raise ValueError(
                f"KDF parameters {params.describe()} are weaker than recommended; "
                "pass allow_weak_kdf=True only for tests"
            )
        if masker is not None and not callable(masker):
            raise TypeError("masker must be callable as masker(image, box) -> image")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise TypeError(f"fill must be a number, got {type(fill).__name__}")
        self.kdf = params
        self.masker = masker
        self.fill = fill

    def _conceal(self, image: Array, box: Box, rows: slice, cols: slice) -> Array:
        if self.masker is None:
            out = image.copy()
            out[rows, cols] = np.asarray(self.fill).astype(image.dtype)
            return out
        out = np.asarray(self.masker(image.copy(), box))
        if out.shape != image.shape or out.dtype != image.dtype:
            raise ValueError(
                f"masker returned shape {out.shape} / dtype {out.dtype}, expected "
                f"{image.shape} / {image.dtype}"
            )
        outside = np.ones(image.shape[:2], dtype=bool)
        outside[rows, cols] = False
        if not np.array_equal(out[outside], image[outside]):
            raise ValueError("masker changed pixels outside the box: recovery could not be exact")
        return out

    def seal(
        self, image: npt.ArrayLike, box: Box | None, password: str | bytes
    ) -> tuple[Array, bytes]:
        """Conceal ``box`` (x0, y0, x1, y1; None = whole image) and return (protected, token)."""
        arr = _check_image(image)
        pw = _password_bytes(password)
        y0, y1, x0, x1 = clip_box(box, arr.shape[0], arr.shape[1])
        clipped: Box = (x0, y0, x1, y1)
        rows, cols = slice(y0, y1), slice(x0, x1)
        protected = self._conceal(arr, clipped, rows, cols)
        meta = {
            "scheme": "dpface reversible pseudonymisation (not differential privacy)",
            "aead": AEAD_NAME,
            "kdf": self.kdf.describe(),
            "shape": list(arr.shape),
            "dtype": arr.dtype.str,
            "box": list(clipped),
            "protected_sha256": _digest(protected),
        }
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
        salt = secrets.token_bytes(SALT_BYTES)
        nonce = secrets.token_bytes(NONCE_BYTES)
        header = (
            _FIXED.pack(MAGIC, VERSION, _KDF_IDS[self.kdf.name], self.kdf.a, self.kdf.b, self.kdf.c)
            + salt
            + nonce
            + _META_LEN.pack(len(meta_bytes))
            + meta_bytes
        )
        key = self.kdf.derive(pw, salt)
        plaintext = np.ascontiguousarray(arr[rows, cols]).tobytes()
        ciphertext = AESGCM(key).encrypt(nonce, plaintext, header)
        return protected, header + ciphertext

    @staticmethod
    def recover(
        protected_image: npt.ArrayLike,
        token: bytes,
        password: str | bytes,
        *,
        verify_image: bool = True,
    ) -> Array:
        """The original image, bit-exactly, or a :class:`RecoveryError`.

        The token says which KDF and parameters to use (within DoS limits). With
        ``verify_image`` (default) the protected image must be exactly the one sealed; turn it off
        to restore the region into an image edited outside the box (only the region is then the
        original).
        """
        arr = _check_image(protected_image)
        pw = _password_bytes(password)
        info, header, ciphertext = _parse(token)
        if tuple(arr.shape) != info.shape or arr.dtype.str != info.dtype:
            raise ImageMismatchError(
                f"image has shape {arr.shape} / dtype {arr.dtype.str}; the token was sealed for "
                f"{info.shape} / {info.dtype}"
            )
        key = info.kdf.derive(pw, info.salt)
        try:
            plaintext = AESGCM(key).decrypt(info.nonce, ciphertext, header)
        except InvalidTag:
            raise AuthenticationError(
                "recovery failed: wrong password, or the token was altered"
            ) from None
        if verify_image and _digest(arr) != info.protected_sha256:
            raise ImageMismatchError(
                "the protected image differs from the one this token was sealed with "
                "(pass verify_image=False to restore the region anyway)"
            )
        y0, y1, x0, x1 = clip_box(info.box, arr.shape[0], arr.shape[1])
        region_shape = (y1 - y0, x1 - x0, *arr.shape[2:])
        region = np.frombuffer(plaintext, dtype=np.dtype(info.dtype))
        if region.size != int(np.prod(region_shape)):
            raise TokenFormatError("decrypted region has the wrong size")  # authentic yet odd
        out = arr.copy()
        out[y0:y1, x0:x1] = region.reshape(region_shape)
        return out
