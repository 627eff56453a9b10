"""Identity refinement of a synthetic face through the generator's own differentiable
encoders (MobileFace and FaceRes, run by the torch TFJS interpreter).

An average of three real faces can still resemble each contributor. ``push_away`` changes
the average *smoothly* until neither internal encoder matches any contributor photo: a
coarse displacement field (feature shapes move by a few pixels) and a coarse lightness
field (mid-frequency shading), both on a low-resolution control grid upsampled bicubically
and confined to the inner face. No pixel noise, no colour change. dlib never runs here: it
verifies the result afterwards (``dpface.generators.bank``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RefineSettings:
    """Optimisation constants."""

    steps: int = 40
    grid: int = 12  # control points per side for both fields
    max_shift: float = 5.0  # canonical pixels
    max_light: float = 14.0  # lightness change (0..255 scale)
    margin: float = 0.07  # push below each encoder's threshold by this much
    lr: float = 0.08


def _crops(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mobileface 112 crop, faceres 224 crop) of an S×S canonical NHWC image (S a multiple
    of 128): the canonical frame is the ArcFace template × S/128 shifted S/16 right, so the
    ArcFace 112 frame is its [0:7S/8, S/16:15S/16] window."""
    size = img.shape[1]
    x0, side = size // 16, size * 7 // 8
    win = img[:, 0:side, x0 : x0 + side, :].permute(0, 3, 1, 2)
    fr = F.interpolate(win, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mf = F.interpolate(win, size=(112, 112), mode="bilinear", antialias=True, align_corners=False)
    return mf.permute(0, 2, 3, 1), fr.permute(0, 2, 3, 1)


def push_away(
    texture: np.ndarray,
    mask: np.ndarray,
    avoid: dict[str, np.ndarray],
    thresholds: dict[str, float],
    settings: RefineSettings | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Refine an (S, S, 3) float canonical texture so that its MobileFace and FaceRes embeddings
    stay below ``threshold - margin`` against every row of ``avoid[encoder]``.
    Returns (uint8 texture, final max similarities)."""
    from dpface.models.encoders import get_encoder

    s = settings or RefineSettings()
    mf = get_encoder("mobileface")
    fr = get_encoder("faceres")
    base = torch.from_numpy(np.asarray(texture, dtype=np.float32))[None]  # 1,H,W,3
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]  # 1,1,H,W
    a_mf = torch.from_numpy(np.asarray(avoid["mobileface"], dtype=np.float32))
    a_fr = torch.from_numpy(np.asarray(avoid["faceres"], dtype=np.float32))
    t_mf = thresholds["mobileface"] - s.margin
    t_fr = thresholds["faceres"] - s.margin
    size = base.shape[1]
    ctrl = torch.zeros(1, 3, s.grid, s.grid, requires_grad=True)  # dx, dy, lightness
    opt = torch.optim.Adam([ctrl], lr=s.lr)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    ident = torch.stack([xs, ys], dim=-1)[None]
    best: tuple[float, torch.Tensor] | None = None

    def render(c: torch.Tensor) -> torch.Tensor:
        f = F.interpolate(torch.tanh(c), size=(size, size), mode="bicubic", align_corners=True) * m
        shift = f[:, :2].permute(0, 2, 3, 1) * (2.0 * s.max_shift / size)
        img = F.grid_sample(
            base.permute(0, 3, 1, 2),
            ident + shift,
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )
        # lightness: the same offset on R, G and B (no hue change)
        img = img + f[:, 2:3] * s.max_light
        return img.permute(0, 2, 3, 1).clamp(0, 255)

    sims = {"mobileface": 1.0, "faceres": 1.0}
    for _ in range(s.steps):
        img = render(ctrl)
        x_mf, x_fr = _crops(img)
        s_mf = a_mf @ mf.embed_tensor(x_mf)[0]  # type: ignore[attr-defined]
        s_fr = a_fr @ fr.embed_tensor(x_fr)[0]  # type: ignore[attr-defined]
        worst = max(float(s_mf.max().detach()) - t_mf, float(s_fr.max().detach()) - t_fr)
        if best is None or worst < best[0]:
            best = (worst, ctrl.detach().clone())
            sims = {"mobileface": float(s_mf.max().detach()), "faceres": float(s_fr.max().detach())}
        if worst < -0.02:
            break
        loss = F.relu(s_mf - t_mf + 0.02).sum() + F.relu(s_fr - t_fr + 0.02).sum()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    assert best is not None
    with torch.no_grad():
        out = render(best[1])[0].numpy()
    return np.clip(np.round(out), 0, 255).astype(np.uint8), sims
