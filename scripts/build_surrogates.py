"""Build (or verify the cached) surrogate bank of ``SurrogateGenerator`` at set-up.

The bank is built from the sample faces fetched by ``scripts/fetch_assets.py`` (so run this
after it) and cached under ``assets/.cache``; see ``dpface.generators.bank`` for how it is
built and verified. Without this step the bank is built on first use (about a minute).

    .venv/bin/python scripts/build_surrogates.py
"""

from __future__ import annotations

import json
import time


def main() -> None:
    """Build the bank if it is not cached, then print its verification summary."""
    from dpface.generators.bank import bank_path, default_bank

    cached = bank_path().is_file()
    t = time.perf_counter()
    bank = default_bank()
    verb = "read" if cached else "built"
    print(
        f"surrogate bank {verb} in {time.perf_counter() - t:.1f} s: {len(bank)} synthetic"
        f" identities at {bank_path()}"
    )
    summary = {k: v for k, v in bank.report.items() if k != "left_out"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
