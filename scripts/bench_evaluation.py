"""Benchmark of the evaluation harness: faces × ε × attackers with 1 and with 2 workers.

    python -m scripts.bench_evaluation [--faces 100] [--epsilons 0.5,1,2,6,50] [--workers 1 2]

The sample faces are cycled up to ``--faces`` (each copy is a separate face with its own
random stream); every face is released once per ε with ``IdentityLaplace`` + the surrogate
generator and measured with every utility metric and the three attackers (dlib, FaceRes,
MobileFace). Each worker count runs from an empty cache. Speed is reported, not asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def run(
    faces: int = 100,
    epsilons: tuple[float, ...] = (0.5, 1, 2, 6, 50),
    workers: tuple[int, ...] = (1, 2),
    seed: int = 2024,
) -> dict[int, float]:
    """Seconds for the whole evaluation, per worker count."""
    from dpface.evaluation import anonymisers as A
    from dpface.evaluation.faces import replicate, sample_faces
    from dpface.evaluation.runner import RunConfig, run_all

    fs = replicate(sample_faces(), faces)
    conds = [A.identity("identity-laplace", e) for e in epsilons]
    cfg = RunConfig(
        seed=seed, draws=1, attackers=("dlib", "faceres", "mobileface"), averaging=(), parrot=False
    )
    out: dict[int, float] = {}
    for w in workers:
        with tempfile.TemporaryDirectory(prefix="dpface-bench-") as tmp:
            t = time.perf_counter()
            _, computed = run_all(conds, fs, cfg, Path(tmp), workers=w)
            out[w] = time.perf_counter() - t
        n = len(fs) * len(conds)
        print(
            f"{w} worker(s): {n} outputs ({len(fs)} faces × {len(conds)} ε × 3 attackers, "
            f"{computed} computed) in {out[w]:.1f} s = {n / out[w]:.2f} outputs/s",
            flush=True,
        )
    if 1 in out and len(out) > 1:
        for w, s in out.items():
            if w != 1:
                print(f"speed-up with {w} workers: {out[1] / s:.2f}×")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=100)
    ap.add_argument("--epsilons", default="0.5,1,2,6,50")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=2024)
    a = ap.parse_args(argv)
    run(a.faces, tuple(float(e) for e in a.epsilons.split(",")), tuple(a.workers), a.seed)


if __name__ == "__main__":
    main()
