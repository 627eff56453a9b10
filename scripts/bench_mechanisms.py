"""Throughput benchmark of the secure samplers, with baselines measured in the same run.

    python -m scripts.bench_mechanisms [--rows 10000] [--dim 512] [--repeat 3]

Reports values/second for
* our grid Laplace mechanism on a (rows, dim) batch of embeddings (each row its own query),
* raw ``numpy.random.Generator.laplace`` on the same number of values (insecure floats; the speed
  reference), and
* diffprivlib's ``Laplace.randomise`` called once per value (its scalar API), timed on a subset
  and reported per value,
and prints the ratios. Nothing here is a test: speed is reported, not asserted.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace


def _best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(
    rows: int = 10_000, dim: int = 512, repeat: int = 3, scalar_sample: int = 20_000
) -> dict[str, float]:
    """Measure and return seconds per value for each contender."""
    n = rows * dim
    x = np.zeros((rows, dim))
    ours = Laplace(epsilon=1.0, sensitivity=1.0)
    ours.batch(x[:1])  # build the exact threshold tables once (cached per scale)
    t_ours = _best_of(repeat, lambda: ours.batch(x)) / n

    rng = np.random.default_rng()
    t_numpy = _best_of(repeat, lambda: rng.laplace(0.0, 1.0, size=n)) / n

    from diffprivlib.mechanisms import Laplace as DplLaplace

    dpl = DplLaplace(epsilon=1.0, sensitivity=1.0)
    values = np.zeros(scalar_sample)
    t_dpl = _best_of(1, lambda: [dpl.randomise(float(v)) for v in values]) / scalar_sample

    gauss = Gaussian(epsilon=1.0, delta=1e-6, sensitivity=1.0)
    g_rows = max(1, rows // 10)
    gauss.batch(x[:1])
    t_gauss = _best_of(1, lambda: gauss.batch(x[:g_rows])) / (g_rows * dim)
    return {"ours": t_ours, "numpy": t_numpy, "diffprivlib": t_dpl, "gaussian": t_gauss}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    res = run(args.rows, args.dim, args.repeat)
    n = args.rows * args.dim
    print(
        f"secure Laplace on {args.rows} x {args.dim} embeddings ({n:,} values), "
        f"best of {args.repeat}"
    )
    for name, label in [
        ("ours", "dpface grid Laplace (exact, CSPRNG)"),
        ("numpy", "numpy Generator.laplace (float, PCG64)"),
        ("diffprivlib", "diffprivlib Laplace.randomise loop"),
        ("gaussian", "dpface grid Gaussian (exact, CSPRNG)"),
    ]:
        sec = res[name]
        print(f"  {label:42s} {1.0 / sec:14,.0f} values/s  {sec * 1e9:9.1f} ns/value")
    print(f"  ours vs numpy:        {res['ours'] / res['numpy']:.2f}x the time of raw numpy")
    print(
        f"  ours vs diffprivlib:  {res['diffprivlib'] / res['ours']:.0f}x faster "
        "than the scalar loop"
    )


if __name__ == "__main__":
    main()
