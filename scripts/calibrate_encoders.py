"""Re-derive each encoder's verification threshold and AUC on the sample faces.

usage: python -m scripts.calibrate_encoders

For every encoder: embed all sample faces, score the labelled pairs
(``samples.labelled_pairs``), and report ROC AUC, the Youden-optimal cosine threshold
(``encoders.calibrate``), the shipped threshold and its true/false match rates. With
``--mirror`` each face's mirror image is added as an extra same-person example.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dpface.models.encoders import calibrate, get_encoder, pair_similarity
from dpface.models.samples import labelled_pairs, sample_faces


@dataclass(frozen=True)
class Calibration:
    """Calibration of one encoder on the sample pairs."""

    encoder: str
    auc: float
    threshold: float  # Youden-optimal on these pairs
    shipped_threshold: float
    tpr: float  # at the shipped threshold
    fpr: float
    positives: int
    negatives: int


def run(
    names: tuple[str, ...] = ("mobileface", "faceres", "faceres-deep", "dlib"),
) -> list[Calibration]:
    """Calibrate the named encoders on the sample faces."""
    faces = sample_faces()
    i, j, same = labelled_pairs(faces)
    out = []
    for name in names:
        enc = get_encoder(name)
        s = pair_similarity(enc.embed(faces), i, j)
        auc, thr = calibrate(s, same)
        out.append(
            Calibration(
                name,
                auc,
                thr,
                enc.threshold,
                float((s[same] >= enc.threshold).mean()),
                float((s[~same] >= enc.threshold).mean()),
                int(same.sum()),
                int((~same).sum()),
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the calibration table."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    for c in run():
        print(
            f"{c.encoder:<11} AUC {c.auc:.4f}  optimal cos ≥ {c.threshold:.3f}  shipped "
            f"{c.shipped_threshold:.3f} (TPR {c.tpr:.3f}, FPR {c.fpr:.4f}; "
            f"{c.positives} same / {c.negatives} different pairs)"
        )


if __name__ == "__main__":
    main()
