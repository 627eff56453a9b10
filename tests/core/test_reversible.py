"""Reversible pseudonymisation (mechanisms/reversible.py): exact recovery, loud failures on a
wrong password or any tampering, recorded KDF parameters, fresh salt/nonce, and no epsilon.

Most tests use deliberately cheap KDF parameters (allow_weak_kdf=True) so that hundreds of
seal/recover calls stay fast; one test runs the recommended defaults end to end.
"""

from __future__ import annotations

import json
import struct
import unicodedata
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mechanisms.base import Mechanism
from mechanisms.pixelization import DPPixelization, clip_box
from mechanisms.reversible import (
    AuthenticationError,
    ImageMismatchError,
    KdfParams,
    RecoveryError,
    ReversiblePseudonymizer,
    TokenFormatError,
    read_token_info,
)
from mechanisms.rng import Randomness

Array = npt.NDArray[Any]

FAST_ARGON = KdfParams.argon2id(iterations=1, lanes=1, memory_kib=64)
FAST_SCRYPT = KdfParams.scrypt(log2_n=8, r=8, p=1)
PW = "correct horse battery staple"


def _fast(kdf: KdfParams = FAST_ARGON, **kwargs: Any) -> ReversiblePseudonymizer:
    return ReversiblePseudonymizer(kdf=kdf, allow_weak_kdf=True, **kwargs)


def _image(seed: int, shape: tuple[int, ...], dtype: str) -> Array:
    gen = Randomness.from_seed(seed).generator
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return gen.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return gen.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    raw = gen.integers(0, 2**63, size=shape, dtype=np.int64).astype(np.float64) - 2.0**62
    return (raw * 1e-15).astype(dt)


DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64", "bool"]


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    channels=st.sampled_from([0, 1, 3, 4]),
    box=st.tuples(st.integers(-4, 20), st.integers(-4, 20), st.integers(1, 12), st.integers(1, 12)),
    kdf=st.sampled_from([FAST_ARGON, FAST_SCRYPT]),
    seed=st.integers(0, 2**16),
)
def test_right_password_restores_bit_exactly(
    dtype: str,
    h: int,
    w: int,
    channels: int,
    box: tuple[int, int, int, int],
    kdf: KdfParams,
    seed: int,
) -> None:
    bx, by, bw, bh = box  # corner and size: the box may stick out of the image
    box = (bx, by, bx + bw, by + bh)
    assume(bx + bw > 0 and by + bh > 0 and bx < w and by < h)
    shape = (h, w) if channels == 0 else (h, w, channels)
    original = _image(seed, shape, dtype)
    keep = original.copy()
    rp = _fast(kdf)
    protected, token = rp.seal(original, box, PW)
    assert np.array_equal(original, keep)  # the input is not modified
    assert protected.shape == original.shape and protected.dtype == original.dtype
    cy0, cy1, cx0, cx1 = clip_box(box, h, w)
    outside = np.ones((h, w), dtype=bool)
    outside[cy0:cy1, cx0:cx1] = False
    assert np.array_equal(protected[outside], original[outside])
    assert not np.any(protected[cy0:cy1, cx0:cx1])  # default: filled with 0
    restored = ReversiblePseudonymizer.recover(protected, token, PW)
    assert restored.dtype == original.dtype and restored.shape == original.shape
    assert restored.tobytes() == original.tobytes()  # bit-exact (also NaN/-0.0 safe)


def test_recommended_defaults_round_trip() -> None:
    rp = ReversiblePseudonymizer()
    assert rp.kdf == KdfParams.argon2id() and rp.kdf.recommended
    original = _image(1, (20, 30, 3), "uint8")
    protected, token = rp.seal(original, (4, 2, 25, 18), PW)
    assert read_token_info(token).kdf == KdfParams(name="argon2id", a=3, b=4, c=65536)
    assert np.array_equal(rp.recover(protected, token, PW), original)
    with pytest.raises(AuthenticationError):
        rp.recover(protected, token, PW + "!")


@pytest.mark.parametrize("kdf", [FAST_ARGON, FAST_SCRYPT], ids=["argon2id", "scrypt"])
def test_wrong_password_fails_loudly(kdf: KdfParams) -> None:
    original = _image(2, (16, 16, 3), "uint8")
    protected, token = _fast(kdf).seal(original, None, PW)
    wrong_passwords: list[str | bytes] = [
        "",
        "correct horse battery stapl",
        PW.upper(),
        b"\x00",
        PW + " ",
        PW.encode("utf-16"),
    ]
    for wrong in wrong_passwords:
        if wrong == "":
            with pytest.raises(ValueError, match="empty"):
                ReversiblePseudonymizer.recover(protected, token, wrong)
            continue
        with pytest.raises(AuthenticationError, match="wrong password"):
            ReversiblePseudonymizer.recover(protected, token, wrong)
    assert issubclass(AuthenticationError, RecoveryError) and issubclass(RecoveryError, ValueError)


def test_every_flipped_token_byte_is_refused() -> None:
    """Header (magic, version, KDF ids/params, salt, nonce, metadata) and ciphertext/tag alike."""
    original = _image(3, (6, 7, 3), "uint8")
    protected, token = _fast().seal(original, (1, 1, 5, 6), PW)
    for i in range(len(token)):
        bad = bytearray(token)
        bad[i] ^= 0x01
        with pytest.raises(RecoveryError):
            ReversiblePseudonymizer.recover(protected, bytes(bad), PW)
    assert np.array_equal(ReversiblePseudonymizer.recover(protected, token, PW), original)


_FIXED = struct.calcsize(">4sBB3I") + 16 + 12  # magic..kdf params, salt, nonce


def _metadata(token: bytes) -> dict[str, Any]:
    (length,) = struct.unpack_from(">I", token, _FIXED)
    meta: dict[str, Any] = json.loads(token[_FIXED + 4 : _FIXED + 4 + length])
    return meta


def _rewrite_metadata(token: bytes, edit: Any) -> bytes:
    """Re-encode the JSON metadata with ``edit`` applied (a well-formed but forged header)."""
    fixed = _FIXED
    (length,) = struct.unpack_from(">I", token, fixed)
    start = fixed + 4
    meta = _metadata(token)
    edit(meta)
    new = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return token[:fixed] + struct.pack(">I", len(new)) + new + token[start + length :]


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.__setitem__("box", [2, 1, 6, 6]),  # same size region, moved
        lambda m: m.__setitem__("box", [0, 0, 4, 4]),
        lambda m: m.__setitem__("protected_sha256", "0" * 64),
        lambda m: m.__setitem__("aead", "none"),
        lambda m: m.__setitem__("extra", 1),
    ],
    ids=["box-moved", "box-resized", "digest", "aead-name", "extra-field"],
)
def test_tampered_region_metadata_is_refused(edit: Any) -> None:
    original = _image(4, (8, 8), "uint8")
    protected, token = _fast().seal(original, (1, 1, 5, 6), PW)
    forged = _rewrite_metadata(token, edit)
    assert forged != token
    with pytest.raises(RecoveryError):
        ReversiblePseudonymizer.recover(protected, forged, PW)


def test_malformed_tokens_are_refused_before_any_costly_work() -> None:
    original = _image(5, (8, 8), "uint8")
    protected, token = _fast().seal(original, None, PW)
    cases = [
        token[:10],  # truncated
        b"XXXX" + token[4:],  # bad magic
        token[:4] + bytes([2]) + token[5:],  # unknown version
        token[:5] + bytes([9]) + token[6:],  # unknown KDF
        # scrypt with N = 2^40: refused by the DoS guard, not attempted
        token[:5] + struct.pack(">B3I", 1, 40, 8, 1) + token[18:],
        # argon2id asking for 1 TiB of memory
        token[:5] + struct.pack(">B3I", 2, 1, 1, 2**30) + token[18:],
    ]
    for bad in cases:
        with pytest.raises(TokenFormatError):
            ReversiblePseudonymizer.recover(protected, bad, PW)
    with pytest.raises(TypeError):
        ReversiblePseudonymizer.recover(protected, "not bytes", PW)  # type: ignore[arg-type]


def test_changed_protected_image_is_detected() -> None:
    original = _image(6, (12, 12, 3), "uint8")
    protected, token = _fast().seal(original, (2, 2, 8, 8), PW)
    edited = protected.copy()
    edited[0, 0, 0] ^= 1  # outside the box
    with pytest.raises(ImageMismatchError):
        ReversiblePseudonymizer.recover(edited, token, PW)
    # explicit opt-out: the region comes back, the edit outside stays
    restored = ReversiblePseudonymizer.recover(edited, token, PW, verify_image=False)
    assert np.array_equal(restored[2:8, 2:8], original[2:8, 2:8])
    assert restored[0, 0, 0] == edited[0, 0, 0]
    with pytest.raises(ImageMismatchError):
        ReversiblePseudonymizer.recover(protected[:, :-1], token, PW)
    with pytest.raises(ImageMismatchError):
        ReversiblePseudonymizer.recover(protected.astype(np.uint16), token, PW)


def test_two_seals_differ_and_record_their_parameters() -> None:
    original = _image(7, (10, 10), "uint8")
    rp = _fast(FAST_SCRYPT)
    p1, t1 = rp.seal(original, (0, 0, 5, 5), PW)
    p2, t2 = rp.seal(original, (0, 0, 5, 5), PW)
    assert np.array_equal(p1, p2)  # concealment is deterministic here
    i1, i2 = read_token_info(t1), read_token_info(t2)
    assert i1.salt != i2.salt and i1.nonce != i2.nonce
    assert len(i1.salt) == 16 and len(i1.nonce) == 12
    assert t1[-41:] != t2[-41:]  # different keys: different ciphertexts
    assert i1.kdf == FAST_SCRYPT and i1.version == 1 and i1.aead == "AES-256-GCM"
    meta = _metadata(t1)
    assert meta["kdf"] == {"kdf": "scrypt", "N": 256, "r": 8, "p": 1}
    # the ciphertext is exactly the region plus the 16-byte tag: no compression-length leak
    assert i1.ciphertext_length == 5 * 5 + 16
    assert i1.box == (0, 0, 5, 5) and i1.shape == (10, 10) and i1.dtype == "|u1"


def test_it_is_pseudonymisation_with_no_epsilon() -> None:
    rp = _fast()
    assert not isinstance(rp, Mechanism)
    for name in ("epsilon", "delta", "guarantee", "privacy_map", "event"):
        assert not hasattr(rp, name)
    assert "NOT differential privacy" in rp.statement
    _, token = rp.seal(_image(8, (6, 6), "uint8"), None, PW)
    assert b"epsilon" not in token.lower() and b"not differential privacy" in token
    info = read_token_info(token)
    assert not hasattr(info, "epsilon") and "not differential privacy" in info.scheme


def test_unicode_passwords_are_normalised_and_bytes_accepted() -> None:
    original = _image(9, (5, 5), "uint8")
    composed = unicodedata.normalize("NFC", "pässwörd")
    decomposed = unicodedata.normalize("NFD", "pässwörd")
    assert composed != decomposed
    protected, token = _fast().seal(original, None, composed)
    assert np.array_equal(ReversiblePseudonymizer.recover(protected, token, decomposed), original)
    assert np.array_equal(
        ReversiblePseudonymizer.recover(protected, token, composed.encode("utf-8")), original
    )
    with pytest.raises(TypeError):
        _fast().seal(original, None, 1234)  # type: ignore[arg-type]


def test_dp_pixelization_as_masker() -> None:
    original = _image(10, (24, 24, 3), "uint8")
    rp = _fast(masker=DPPixelization(epsilon=1.0, block=8, seed=1))
    protected, token = rp.seal(original, (4, 4, 20, 20), PW)
    assert not np.array_equal(protected[4:20, 4:20], original[4:20, 4:20])
    assert np.all(protected[4:12, 4:12, 0] == protected[4, 4, 0])  # a pixelized cell
    assert np.array_equal(ReversiblePseudonymizer.recover(protected, token, PW), original)


def test_a_masker_that_touches_pixels_outside_the_box_is_refused() -> None:
    def sloppy(image: Array, box: Any) -> Array:
        out = image.copy()
        out[:] = 0
        return out

    with pytest.raises(ValueError, match="outside the box"):
        _fast(masker=sloppy).seal(_image(11, (8, 8), "uint8"), (0, 0, 4, 4), PW)


def test_validation() -> None:
    with pytest.raises(ValueError, match="weaker than recommended"):
        ReversiblePseudonymizer(kdf=FAST_SCRYPT)
    with pytest.raises(ValueError):
        KdfParams.scrypt(log2_n=30).check()
    with pytest.raises(ValueError):
        KdfParams.argon2id(lanes=4, memory_kib=8).check()
    with pytest.raises(ValueError):
        KdfParams.argon2id(iterations=0).check()
    with pytest.raises(TypeError):
        ReversiblePseudonymizer(kdf="scrypt")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ReversiblePseudonymizer(masker=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ReversiblePseudonymizer(FAST_ARGON)  # type: ignore[call-arg]
    rp = _fast()
    img = _image(12, (8, 8), "uint8")
    with pytest.raises(ValueError, match="outside"):
        rp.seal(img, (9, 9, 12, 12), PW)
    with pytest.raises(ValueError, match="empty"):
        rp.seal(img, (3, 3, 3, 5), PW)
    with pytest.raises(ValueError, match="empty"):
        rp.seal(img, None, b"")
    with pytest.raises(ValueError):
        rp.seal(np.zeros((8,), dtype=np.uint8), None, PW)
    with pytest.raises(TypeError):
        rp.seal(np.zeros((4, 4), dtype=np.complex64), None, PW)
