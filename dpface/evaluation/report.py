"""Tables (Markdown, HTML) in the layout of the book's Table 5.1, and the privacy–utility
plots (matplotlib, Agg backend)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ATTACKER_TITLES = {
    "dlib": "dlib",
    "faceres": "FaceRes",
    "mobileface": "MobileFace (white-box)",
    "faceres-deep": "FaceRes-deep",
}


DEFINITIONS = """\
* **What runs**: every dpface row (DP-Pix and the identity mechanisms) is dpface's own
  `Anonymizer` built by `AnonymizeConfig` with the command line's defaults (detector, face
  regions, DP-Pix block b and m in photo pixels, the DP-Pix fallback for faces the generator
  cannot take, the mask for refused releases), called on the whole photo with
  `Anonymizer.anonymize(array)` and a per-release seed; the attackers then read the output at
  the face's true position. Each run charges its own temporary ledger, whose budget holds the
  whole protocol, so no face is masked for want of budget (*Budget refused* counts any).
  The ε=∞ row is the same path with the identity noise left out (a reference, not a product
  setting).
* **Id-dis**: the attacker's distance between an output face and its own input face (dlib:
  L2 on raw descriptors; FaceRes, MobileFace, FaceRes-deep: 1 − cosine). **PSR** (protection
  success rate): share of outputs at or beyond the attacker's match threshold (dlib 0.6;
  FaceRes 0.409; MobileFace 0.735; FaceRes-deep 0.319 as cosine distances). The attacker
  finds the output face itself (dlib HOG near the input box, 68 landmarks in the found box,
  or in the input box when nothing is found). MobileFace is the encoder inside dpface's
  identity mechanisms (white-box attacker); dlib, FaceRes and FaceRes-deep never run inside
  dpface.
* **Rank-1**: identification among the evaluated originals: the nearest original in the
  gallery of all input faces (pairs of unknown answer left out) is the same person (lower is
  better protection); *other photo*: the probe's own photo is left out, only people with
  another photo count. **Parrot**: the gallery is the attacker's own anonymisation of every
  input with the same anonymiser (independent randomness); a deterministic anonymiser
  therefore gives the attacker an exact copy of the release. **TAR@FAR=0.1**: outputs matched
  to another photo of the same person at the distance threshold that accepts 10 % of known
  different-person pairs.
* **Averaging attack**: the attacker averages its embeddings of n independent releases of
  one face (identity mechanisms only) and compares the average with the original.
* **PSNR/SSIM (face)**: on the 256×256 ArcFace-aligned crop at the input's landmarks; *(image)*:
  the whole photo. **Detection**: dlib HOG / BlazeFace find a face at the input's box
  (IoU ≥ 0.3, BlazeFace: centre inside and IoU ≥ 0.15). **Expression agreement**: top-1 of the
  7-class emotion model agrees; *TV distance*: half the L1 distance of the class probabilities.
  **Age error / gender agreement**: FaceRes estimates. **Head-pose error**: mean
  absolute difference of yaw, pitch and roll (degrees) between the input's and the output's
  dlib landmarks (a scaled-orthographic fit of a generic head). **Landmark NME**: dlib 68 landmarks,
  mean error over the outer inter-ocular distance. **Skin ΔE2000**: between mean Lab skin
  colours on a skin mask (face hull without eyes, brows, mouth); **texture ratio**: std of
  lightness detail on the mask, output over input. **Fréchet descriptor distance (FaceRes)**:
  Fréchet distance between Gaussians fitted to the FaceRes descriptors of inputs and outputs
  (not FID; with few faces it is biased upwards, compare rows only). **s/photo**: one release
  of the whole photo (for dpface rows: the `anonymize` call, detection included).
* **What the product did**: per evaluated face and release, whether a region the product
  protects covers at least half of the face's true box (*found*), and how that region was
  protected: a generated face, the run's DP-Pix mechanism, the DP-Pix fallback (a face the
  generator could not take), a mask; *budget refused*: a release the ledger refused.
* **Baselines** act on the regions the product protects in the same photo (so a face the
  product misses is left unchanged by every row); sizes are pixels at a 192-px region (a
  128-px face), scaled to each region. Blur k×k: down/up-sampling so one pixel covers k×k;
  pixelation k×k: k×k blocks; Gaussian blur σ = 6; noise σ on 0–255; black mask. **DP-Pix**:
  ε-DP for m-pixel neighbours, block b in photo pixels (not scaled: as users set it).
  **dpface**: IdentityLaplace on the MobileFace embedding + the surrogate generator; ε=∞
  feeds the generator the un-noised embedding.
* Mean ± 95 % CI: Student t over faces (draws of a face averaged first); no ± when the value
  is pooled (TAR, Fréchet) or constant.
"""


def _cell(summary: dict[str, Any], key: str, digits: int = 3) -> str:
    val = summary["metrics"].get(key)
    if val is None:
        return "–"
    mean, half = val
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if math.isinf(mean):
        return "∞"
    if abs(mean) < 0.5 * 10.0**-digits:
        mean = 0.0  # no "-0.000"
    if half is None or math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _eps(summary: dict[str, Any]) -> str:
    e = summary["epsilon"]
    if e is None:
        return "–"
    if math.isinf(e):
        return "∞"
    head = summary.get("head_epsilon") or 0.0
    return f"{e:g} + {head:g} (head)" if head > 0 else f"{e:g}"


def main_columns(attackers: Sequence[str]) -> list[tuple[str, str, int]]:
    """(header, metric key, digits) of the Table-5.1 layout."""
    cols: list[tuple[str, str, int]] = []
    for a in attackers:
        t = ATTACKER_TITLES.get(a, a)
        cols += [
            (f"Id-dis {t}", f"iddis_{a}", 3),
            (f"PSR {t}", f"psr_{a}", 3),
            (f"Rank-1 {t.split(' ')[0]}", f"rank1_{a}", 3),
        ]
    cols += [
        ("PSNR (face)", "psnr_face", 2),
        ("SSIM (face)", "ssim_face", 3),
        ("Detection HOG", "detected_hog", 3),
        ("Detection BlazeFace", "detected_blazeface", 3),
        ("Expression agreement", "emotion_agrees", 3),
    ]
    return cols


def attack_columns(attackers: Sequence[str]) -> list[tuple[str, str, int]]:
    """Gallery attacks beyond rank-1 (in the main table): other photo, parrot, TAR@FAR."""
    cols: list[tuple[str, str, int]] = []
    for a in attackers:
        t = ATTACKER_TITLES.get(a, a).split(" ")[0]
        cols += [
            (f"Rank-1 other photo {t}", f"rank1_other_{a}", 3),
            (f"Parrot rank-1 {t}", f"parrot_rank1_{a}", 3),
            (f"Parrot rank-1 other photo {t}", f"parrot_rank1_other_{a}", 3),
            (f"Parrot PSR {t}", f"parrot_psr_{a}", 3),
            (f"TAR@FAR=0.1 {t}", f"tar@far0.1_{a}", 3),
        ]
    return cols


def utility_columns() -> list[tuple[str, str, int]]:
    """Further utility metrics."""
    return [
        ("SSIM (image)", "ssim_image", 4),
        ("PSNR (image)", "psnr_image", 1),
        ("Landmark NME", "nme", 3),
        ("Head-pose error (°)", "pose_error", 1),
        ("Emotion TV distance", "emotion_tv", 3),
        ("Age error (y)", "age_error", 1),
        ("Gender agreement", "gender_agrees", 3),
        ("Skin ΔE2000", "skin_delta_e", 2),
        ("Skin texture ratio", "skin_texture", 2),
        ("Fréchet descriptor distance (FaceRes)", "frechet_faceres", 3),
        ("s/photo (release)", "seconds", 3),
    ]


def product_columns() -> list[tuple[str, str, int]]:
    """What the product did to each evaluated face (share of releases)."""
    return [
        ("Found by the product", "found", 3),
        ("Generated face", "by_generator", 3),
        ("DP-Pix (run's mechanism)", "by_mechanism", 3),
        ("DP-Pix fallback", "by_fallback", 3),
        ("Masked", "by_mask", 3),
        ("Budget refused", "refused", 3),
    ]


def averaging_columns(
    attackers: Sequence[str], counts: Sequence[int]
) -> list[tuple[str, str, int]]:
    """PSR after averaging n releases, per attacker."""
    return [
        (f"PSR {ATTACKER_TITLES.get(a, a).split(' ')[0]} n={n}", f"avg{n}_psr_{a}", 3)
        for a in attackers
        for n in counts
    ]


def markdown_table(
    summaries: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str, int]]
) -> str:
    """A Markdown table: one row per condition."""
    head = "| Method | ε | " + " | ".join(c[0] for c in cols) + " |"
    sep = "|---|---|" + "|".join("---:" for _ in cols) + "|"
    rows = [
        f"| {s['label']} | {_eps(s)} | " + " | ".join(_cell(s, k, dg) for _, k, dg in cols) + " |"
        for s in summaries
    ]
    return "\n".join([head, sep, *rows])


def html_table(summaries: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str, int]]) -> str:
    """The same table as HTML."""
    th = "".join(f"<th>{html.escape(c[0])}</th>" for c in cols)
    body = "".join(
        f"<tr><td>{html.escape(s['label'])}</td><td>{_eps(s)}</td>"
        + "".join(f"<td>{html.escape(_cell(s, k, dg))}</td>" for _, k, dg in cols)
        + "</tr>"
        for s in summaries
    )
    return f"<table><tr><th>Method</th><th>ε</th>{th}</tr>{body}</table>"


def write_tables(
    summaries: Sequence[dict[str, Any]],
    out: Path,
    attackers: Sequence[str],
    averaging: Sequence[int],
    header: str,
) -> str:
    """Write ``table51.md`` and ``table51.html`` into ``out``; returns the Markdown."""
    avg_rows = [s for s in summaries if any(k.startswith("avg") for k in s["metrics"])]
    lines = header.splitlines()
    head_md = "\n".join([f"# {lines[0]}", "", *[f"- {x}" for x in lines[1:]], ""])
    parts = [
        head_md,
        "## Table 5.1 layout\n",
        markdown_table(summaries, main_columns(attackers)),
        "\n## Identification attacks\n",
        markdown_table(summaries, attack_columns(attackers)),
        "\n## Further utility\n",
        markdown_table(summaries, utility_columns()),
        "\n## What the product did to each evaluated face (share of releases)\n",
        markdown_table(summaries, product_columns()),
    ]
    if avg_rows:
        parts += [
            "\n## Averaging attack (PSR after averaging n releases of one face)\n",
            markdown_table(avg_rows, averaging_columns(attackers, averaging)),
        ]
    parts += ["\n## Definitions\n", DEFINITIONS]
    md = "\n".join(parts) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table51.md").write_text(md)
    doc = (
        "<!doctype html><meta charset='utf-8'><title>dpface evaluation</title>"
        "<style>table{border-collapse:collapse;font:12px sans-serif}td,th{border:1px solid"
        " #ccc;padding:2px 5px;text-align:right}td:first-child{text-align:left}</style>"
        f"<pre>{html.escape(header)}</pre><h2>Table 5.1 layout</h2>"
        + html_table(summaries, main_columns(attackers))
        + "<h2>Identification attacks</h2>"
        + html_table(summaries, attack_columns(attackers))
        + "<h2>Further utility</h2>"
        + html_table(summaries, utility_columns())
        + "<h2>What the product did to each evaluated face</h2>"
        + html_table(summaries, product_columns())
        + (
            "<h2>Averaging attack</h2>"
            + html_table(avg_rows, averaging_columns(attackers, averaging))
            if avg_rows
            else ""
        )
    )
    (out / "table51.html").write_text(doc)
    return md


def _metric(s: dict[str, Any], key: str) -> tuple[float, float]:
    mean, half = s["metrics"].get(key, [math.nan, math.nan])
    return float(mean), 0.0 if half is None or math.isnan(half) else float(half)


def write_plots(
    summaries: Sequence[dict[str, Any]],
    out: Path,
    attackers: Sequence[str],
    averaging: Sequence[int],
) -> list[Path]:
    """PSR vs SSIM (all conditions), PSR vs ε (DP conditions), PSR vs averaged releases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = {
        "original": "black",
        "baseline": "tab:gray",
        "dp-pix": "tab:orange",
        "generator": "tab:purple",
        "identity-laplace": "tab:blue",
        "identity-gaussian": "tab:green",
        "identity-vmf": "tab:red",
    }
    fig, axes = plt.subplots(1, len(attackers), figsize=(5.2 * len(attackers), 4.6), squeeze=False)
    for ax, a in zip(axes[0], attackers, strict=True):
        for s in summaries:
            x, xe = _metric(s, "ssim_face")
            y, ye = _metric(s, f"psr_{a}")
            ax.errorbar(
                x,
                y,
                xerr=xe,
                yerr=ye,
                fmt="o",
                ms=4,
                capsize=2,
                color=colours.get(s["family"], "tab:brown"),
            )
            short = s["name"].replace("identity-", "").replace("@eps=", " ε")
            ax.annotate(
                short.split(",")[0], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xlabel("SSIM (aligned face crop)")
        ax.set_ylabel(f"PSR ({ATTACKER_TITLES.get(a, a)})")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    fig.suptitle("Privacy (PSR) vs utility (SSIM); mean ± 95% CI over faces")
    fig.tight_layout()
    p = out / "psr_vs_ssim.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fams = [
        f
        for f in ("identity-laplace", "identity-gaussian", "identity-vmf", "dp-pix")
        if any(s["family"] == f for s in summaries)
    ]
    if fams:
        fig, axes = plt.subplots(
            1, len(attackers), figsize=(5.2 * len(attackers), 4.2), squeeze=False
        )
        for ax, a in zip(axes[0], attackers, strict=True):
            for f in fams:
                rows = sorted(
                    (s for s in summaries if s["family"] == f and s.get("head", "keep") == "keep"),
                    key=lambda s: s["epsilon"],
                )
                xs = [s["epsilon"] for s in rows]
                ys = [_metric(s, f"psr_{a}") for s in rows]
                ax.errorbar(
                    xs,
                    [y for y, _ in ys],
                    yerr=[e for _, e in ys],
                    marker="o",
                    capsize=2,
                    label=f,
                    color=colours.get(f),
                )
            for s in summaries:
                if s["family"] in ("generator", "original"):
                    ax.axhline(
                        _metric(s, f"psr_{a}")[0],
                        ls="--",
                        lw=1,
                        color=colours[s["family"]],
                        label=s["label"],
                    )
            ax.set_xscale("log")
            ax.set_xlabel("ε")
            ax.set_ylabel(f"PSR ({ATTACKER_TITLES.get(a, a)})")
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("PSR vs ε (mean ± 95% CI over faces)")
        fig.tight_layout()
        p = out / "psr_vs_epsilon.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)

    avg = [s for s in summaries if any(k.startswith("avg") for k in s["metrics"])]
    if avg and len(averaging) > 1:
        fig, axes = plt.subplots(
            1, len(attackers), figsize=(5.2 * len(attackers), 4.2), squeeze=False
        )
        for ax, a in zip(axes[0], attackers, strict=True):
            for s in avg:
                avg_ys = [_metric(s, f"avg{n}_psr_{a}")[0] for n in averaging]
                ax.plot(list(averaging), avg_ys, marker="o", label=s["label"])
            ax.set_xscale("log", base=2)
            ax.set_xlabel("releases averaged (n)")
            ax.set_ylabel(f"PSR ({ATTACKER_TITLES.get(a, a)})")
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6)
        fig.suptitle("Averaging attack: PSR when the attacker averages n releases")
        fig.tight_layout()
        p = out / "averaging_attack.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths
