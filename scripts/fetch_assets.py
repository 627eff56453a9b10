"""Fetch, verify (sha256) and cache the model files and sample photos dpface uses.

Called by `./dev setup`. Idempotent: files already present with the right hash are skipped,
so a second run only re-hashes (well under a second). Sources and hashes are listed in
dpface/models/manifest.json.
"""

from __future__ import annotations

import sys
import time

from dpface.models.store import AssetError, assets_dir, fetch_all


def main() -> int:
    """Fetch everything in the manifest; print a one-line summary."""
    t0 = time.perf_counter()
    try:
        paths = fetch_all(force="--force" in sys.argv[1:])
    except AssetError as err:
        print(f"[fetch_assets] ERROR: {err}", file=sys.stderr)
        return 1
    try:  # warm the sample-face detection cache (a no-op when it is current)
        from dpface.models.samples import sample_faces

        sample_faces()
    except Exception as err:  # the models are verified; a failure here must not block set-up
        print(f"[fetch_assets] warning: sample-face cache not built: {err}", file=sys.stderr)
    dt = time.perf_counter() - t0
    where = assets_dir()
    print(f"[fetch_assets] {len(paths)} files verified in {where} ({dt:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
