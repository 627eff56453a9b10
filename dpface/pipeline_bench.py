"""Throughput of the anonymiser on the bundled sample photos, with the per-stage split.

    python -m dpface.pipeline_bench [--repeat 1] [--mechanism identity-laplace dp-pix]

For each mechanism: images/s and faces/s over the 16 sample photos (models loaded and warmed
up first), and where the time goes (read, detect, embed, charge, privatise, generate). The
baseline, measured in the same run on the same photos, is detection alone: the ratio says what
de-identification costs on top of finding the faces. One process, torch on the machine's
cores; the ledger is a temporary SQLite file (WAL, synchronous FULL), as in real use.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mechanisms.base import Mechanism
from mechanisms.budgets import PureDP
from mechanisms.identity import IdentityLaplace
from mechanisms.pixelization import DPPixelization

from .detect import detect_array
from .ledger import Ledger
from .models.images import load_rgb
from .models.store import assets_dir
from .pipeline import Anonymizer

STAGES = ("read", "detect", "embed", "link", "charge", "privatise", "steer", "generate")


def _anonymizer(name: str, ledger: Ledger) -> Anonymizer:
    mech: Mechanism
    if name == "identity-laplace":
        from .generators.surrogate import SurrogateGenerator

        gen = SurrogateGenerator()
        mech = IdentityLaplace(epsilon=6.0, dim=gen.identity_dim)
        return Anonymizer(mechanism=mech, generator=gen, ledger=ledger)
    if name == "dp-pix":
        return Anonymizer(mechanism=DPPixelization(epsilon=1.0, block=16, m=16), ledger=ledger)
    raise ValueError(f"unknown mechanism {name!r}")


def run(mechanisms: list[str], repeat: int) -> None:
    photos = sorted((assets_dir() / "samples").iterdir())
    images = [load_rgb(p) for p in photos]
    t = time.perf_counter()
    faces = 0
    for _ in range(repeat):
        for img in images:
            faces += len(detect_array(img, source="bench").faces)
    detect_only = (time.perf_counter() - t) / repeat
    n = len(photos)
    print(f"{n} sample photos, {faces // repeat} faces; repeat={repeat}")
    print(f"baseline  detection only (HOG): {n / detect_only:6.2f} images/s  ({detect_only:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in mechanisms:
            ledger = Ledger(Path(tmp) / f"{name}.db", default_budget=PureDP(1e6))
            anon = _anonymizer(name, ledger)
            anon.anonymize(photos[0])  # load and warm the models outside the timing
            stages = dict.fromkeys(STAGES, 0.0)
            done = 0
            t = time.perf_counter()
            for _ in range(repeat):
                for p in photos:
                    res = anon.anonymize(p)
                    done += len(res.faces)
                    for k, v in res.timings.items():
                        stages[k] = stages.get(k, 0.0) + v
            total = (time.perf_counter() - t) / repeat
            split = ", ".join(
                f"{k} {100 * v / repeat / total:.0f}%" for k, v in stages.items() if v > 0
            )
            print(
                f"{name:17s} {n / total:6.2f} images/s, {done / repeat / total:6.2f} faces/s "
                f"({total:.1f} s; {total / detect_only:.2f}x detection alone)\n"
                f"{'':17s} time by stage: {split}"
            )
            ledger.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--mechanism", nargs="+", default=["identity-laplace", "dp-pix"],
        choices=["identity-laplace", "dp-pix"],
    )
    args = ap.parse_args()
    run(args.mechanism, args.repeat)


if __name__ == "__main__":
    main()
