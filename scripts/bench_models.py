"""Latency of every face model on this machine.

usage: python -m scripts.bench_models [--repeat N] [--threads T]

Prints, per model, the median and best wall time of a batch-1 forward pass (after one
warm-up), and per encoder the time per face including alignment, measured on the real
sample photos. Shows the machine's load average too: timings on a shared machine vary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table (milliseconds)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dpface.detect import detect_array
    from dpface.models.encoders import get_encoder
    from dpface.models.samples import sample_faces
    from dpface.models.tfjs_models import SPECS, load, prepare, run

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} cores; batch 1; median / best ms"
    )
    faces = sample_faces()
    rng = np.random.default_rng(0)
    for name, spec in SPECS.items():
        load(name)
        u8 = rng.integers(0, 256, (1, spec.size, spec.size, spec.channels), dtype=np.uint8)
        x = prepare(name, u8)

        def fwd(x: torch.Tensor = x, name: str = name) -> object:
            with torch.no_grad():
                return run(name, x)

        med, best = _time(fwd, args.repeat)
        print(f"  tfjs {name:<11} {spec.size:>3}px  {med * 1e3:8.1f} / {best * 1e3:8.1f}")
    for enc_name in ("mobileface", "faceres", "dlib"):
        enc = get_encoder(enc_name)
        batch = list(faces[:8])
        med, best = _time(partial(enc.embed, batch), max(3, args.repeat // 5))
        print(
            f"  encoder {enc_name:<12} per face (align + embed) "
            f"{med / len(batch) * 1e3:8.1f} / {best / len(batch) * 1e3:8.1f}"
        )
    img = faces[0].image
    for det in ("hog", "blazeface"):
        med, best = _time(partial(detect_array, img, detector=det), max(3, args.repeat // 5))
        print(
            f"  detect {det:<10} {img.shape[1]}×{img.shape[0]} photo "
            f"{med * 1e3:8.1f} / {best * 1e3:8.1f}"
        )


if __name__ == "__main__":
    main()
