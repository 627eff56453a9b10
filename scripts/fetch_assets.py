"""Fetch, verify (sha256) and cache the model files and sample photos dpface uses.

Called by `./dev setup`; the work is the library's own `dpface fetch` (`dpface.assets.fetch`),
without building the surrogate bank (`./dev setup` runs scripts/build_surrogates.py next).
Idempotent: files already present with the right hash are skipped, so a second run only
re-hashes (about a second). Sources and hashes are listed in dpface/models/manifest.json.
"""

from __future__ import annotations

import sys

from dpface.assets import fetch
from dpface.models.store import AssetError


def main() -> int:
    """Fetch everything in the manifest; print a one-line summary."""
    try:
        result = fetch(force="--force" in sys.argv[1:], progress=sys.stderr.isatty(), build=False)
    except AssetError as err:
        print(f"[fetch_assets] ERROR: {err}", file=sys.stderr)
        return 1
    try:  # warm the sample-face detection cache (a no-op when it is current)
        from dpface.models.samples import sample_faces

        sample_faces()
    except Exception as err:  # the models are verified; a failure here must not block set-up
        print(f"[fetch_assets] warning: sample-face cache not built: {err}", file=sys.stderr)
    got = sum(result.downloaded.values())
    print(
        f"[fetch_assets] {len(result.paths)} files verified in {result.root}"
        f" ({len(result.written)} written, {got / 1e6:.1f} MB downloaded,"
        f" {result.seconds:.1f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
