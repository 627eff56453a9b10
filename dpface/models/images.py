"""Reading photos into one canonical form: RGB uint8 (H, W, 3), upright per EXIF.

Grayscale, palette, RGBA/LA (composited on white), 16-bit and float images are converted;
a truncated or unreadable file raises ``ImageError`` with the file name and the cause.
A pixel cap (``max_pixels``) is checked from the file's header, before anything is decoded:
a 13000×13000 PNG is a few kilobytes on disk but gigabytes once decoded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dpface.errors import InputError


class ImageError(InputError):
    """An input image could not be read or converted."""


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any PIL image (after EXIF transpose) to an RGB uint8 array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        g = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if a.max() <= 1.0 else 1.0
        g = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def array_to_rgb8(a: np.ndarray) -> np.ndarray:
    """Normalise an in-memory array (gray/RGB/RGBA; uint8, uint16 or float in [0,1]) to RGB8."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(f"expected an (H, W[, 1|3|4]) image array, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {a.dtype}")
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float64) / 255.0
        a = np.round(a[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


class ImageTooLarge(ImageError):
    """The image's header declares more pixels than the caller allows (nothing decoded)."""


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header only; ``ImageError`` if it is not an image."""
    return image_header(path)[0]


def image_header(path: str | Path) -> tuple[tuple[int, int], int]:
    """((width, height), frames) without decoding pixels; ``ImageError`` if it is not an
    image. ``frames`` counts the frames or pages (an animated WebP/GIF, a multi-page TIFF): 1
    for an ordinary photo. Only the first is read by :func:`load_rgb`."""
    p = Path(path)
    try:
        with warnings.catch_warnings():  # the caller checks the size: PIL's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as opened:  # lazy: reads the header, decodes nothing
                w, h = opened.size
                return (int(w), int(h)), max(1, int(getattr(opened, "n_frames", 1)))
    except FileNotFoundError as err:
        raise ImageError(f"{p}: no such file") from err
    except Image.DecompressionBombError as err:  # PIL's own cap, checked on open
        raise ImageTooLarge(f"{p}: image too large to decode safely ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{p}: not an image file PIL can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{p}: unreadable image header ({err})") from err


def check_pixels(size: tuple[int, int], max_pixels: float, *, name: str = "image") -> None:
    """Raise :class:`ImageTooLarge` when ``size`` has more than ``max_pixels`` pixels."""
    w, h = size
    if w * h > max_pixels:
        raise ImageTooLarge(
            f"{name}: {w}×{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels; nothing was decoded (raise the limit, e.g. "
            "--max-megapixels, if you have the memory: decoding takes about 3 bytes per pixel "
            "several times over)"
        )


def load_rgb(path: str | Path, *, max_pixels: float | None = None) -> np.ndarray:
    """Read an image file as upright RGB uint8; ``ImageError`` says why when it cannot.

    ``max_pixels``: refuse (:class:`ImageTooLarge`) an image whose header declares more
    pixels, before decoding it."""
    return load_rgb_frames(path, max_pixels=max_pixels)[0]


def load_rgb_frames(path: str | Path, *, max_pixels: float | None = None) -> tuple[np.ndarray, int]:
    """:func:`load_rgb`, and how many frames or pages the file holds (from the same open; only
    the first is read)."""
    p = Path(path)
    try:
        with Image.open(p) as opened:
            if max_pixels is not None:
                check_pixels(opened.size, max_pixels, name=str(p))
            frames = max(1, int(getattr(opened, "n_frames", 1)))
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            return np.ascontiguousarray(to_rgb8(upright)), frames
    except ImageError:
        raise
    except FileNotFoundError as err:
        raise ImageError(f"{p}: no such file") from err
    except Image.DecompressionBombError as err:
        raise ImageError(f"{p}: image too large to decode safely ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{p}: not an image file PIL can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{p}: unreadable or truncated image ({err})") from err
