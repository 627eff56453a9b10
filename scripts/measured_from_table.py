"""Extract the measured re-identification numbers of docs/results/table51.md into
dpface/data/measured.json (the data the privacy report quotes).

    .venv/bin/python scripts/measured_from_table.py            # rewrite the JSON
    .venv/bin/python scripts/measured_from_table.py --check    # exit 1 if it is out of date

The markdown table is written by ``dpface evaluate`` (the evaluation harness); the JSON keeps
its provenance (date, command, number of faces) and, per method and epsilon, each attacker's
protection success rate (PSR: share of outputs the attacker no longer matches) with its 95 %
confidence interval. tests/integration/test_report.py checks that the committed JSON equals this
script's output, so the report can never quote numbers the table does not contain.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "results" / "table51.md"
OUT = ROOT / "dpface" / "data" / "measured.json"
SCHEMA = "dpface.measured/1"

# (column label in the table, key, display name, white-box: the encoder inside dpface)
ATTACKERS: tuple[tuple[str, str, str, bool], ...] = (
    ("dlib", "dlib", "dlib", False),
    ("FaceRes", "faceres", "FaceRes", False),
    ("MobileFace (white-box)", "mobileface", "MobileFace", True),
    ("FaceRes-deep", "faceres-deep", "FaceRes-deep", False),
)
AVERAGING_ATTACKERS: tuple[tuple[str, str], ...] = (
    ("dlib", "dlib"),
    ("FaceRes", "faceres"),
    ("MobileFace", "mobileface"),
    ("FaceRes-deep", "faceres-deep"),
)


def _mechanism(method: str) -> tuple[str | None, dict[str, int]]:
    """The ledger's mechanism name (a class name) for a table method, with its parameters."""
    if method.startswith("dpface Laplace"):
        return "IdentityLaplace", {}
    pix = re.fullmatch(r"DP-Pix ε=[^ ]+ \(b=(\d+), m=(\d+)\)", method)
    if pix:
        return "DPPixelization", {"block": int(pix.group(1)), "m": int(pix.group(2))}
    return None, {}  # a baseline or a reference row: no dpface mechanism


def _epsilon(cell: str) -> float | None:
    cell = cell.strip()
    if cell in ("–", "-", ""):
        return None
    if cell == "∞":
        return math.inf
    return float(cell)


def _mean_ci(cell: str) -> dict[str, float]:
    match = re.fullmatch(r"\s*([0-9.]+)\s*±\s*([0-9.]+)\s*", cell)
    if not match:
        raise ValueError(f"expected 'mean ± half-width', got {cell!r}")
    mean, half = float(match.group(1)), float(match.group(2))
    return {
        "psr": mean,
        "ci95_half_width": half,
        "ci95_low": round(max(0.0, mean - half), 6),
        "ci95_high": round(min(1.0, mean + half), 6),
    }


def _tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every markdown table, keyed by the ``##`` heading it sits under."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading = ""
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            heading, header = line[3:].strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables[heading] = []
        elif all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        else:
            tables[heading].append(dict(zip(header, cells, strict=True)))
    return tables


def _bullets(text: str) -> dict[str, str]:
    """The header's bullet list: ``- key: value`` lines, and ``seed ...`` (the protocol)."""
    out: dict[str, str] = {}
    for line in text.split("\n## ", 1)[0].splitlines():
        line = line.strip()
        match = re.fullmatch(r"- ([a-z ]+): (.*)", line)
        if match:
            out[match.group(1)] = match.group(2)
        elif line.startswith("- seed "):
            out["protocol"] = line[2:]
    return out


def _json_epsilon(value: float | None) -> float | str | None:
    return "inf" if value is not None and math.isinf(value) else value


def extract(text: str) -> dict[str, Any]:
    """The measured.json document for the markdown of table51.md."""
    title = text.splitlines()[0]
    date_match = re.fullmatch(r"# dpface evaluate — (.+)", title.strip())
    if not date_match:
        raise ValueError(f"unexpected title line {title!r}")
    bullets = _bullets(text)
    faces_match = re.match(r"(\d+) from (.*)", bullets["faces"])
    if not faces_match:
        raise ValueError(f"unexpected faces line {bullets['faces']!r}")
    command = re.match(r"`([^`]+)`", bullets["command"])
    tables = _tables(text)
    main = tables["Table 5.1 layout"]
    # the attackers the table measured (older tables have no FaceRes-deep columns)
    present = [a for a in ATTACKERS if main and f"PSR {a[0]}" in main[0]]
    rows = []
    for row in tables["Table 5.1 layout"]:
        method = row["Method"]
        mechanism, params = _mechanism(method)
        attackers = {}
        for label, key, _, _ in present:
            attackers[key] = _mean_ci(row[f"PSR {label}"])
        rows.append(
            {
                "method": method,
                "mechanism": mechanism,
                "parameters": params,
                "epsilon": _json_epsilon(_epsilon(row["ε"])),
                "attackers": attackers,
            }
        )
    averaging_rows = []
    avg_heading = next(h for h in tables if h.startswith("Averaging attack"))
    avg_section = text.split(f"## {avg_heading}", 1)[1]
    avg_command = re.search(r"Separate run: `([^`]+)`", avg_section)
    avg_limit = re.search(r"--limit (\d+)", avg_command.group(1) if avg_command else "")
    for row in tables[avg_heading]:
        mechanism, params = _mechanism(row["Method"])
        by_n: dict[str, dict[str, dict[str, float]]] = {}
        for column, value in row.items():
            match = re.fullmatch(r"PSR (\S+) n=(\d+)", column)
            if not match:
                continue
            key = dict(AVERAGING_ATTACKERS)[match.group(1)]
            by_n.setdefault(match.group(2), {})[key] = _mean_ci(value)
        averaging_rows.append(
            {
                "method": row["Method"],
                "mechanism": mechanism,
                "parameters": params,
                "epsilon": _json_epsilon(_epsilon(row["ε"])),
                "releases": {n: by_n[n] for n in sorted(by_n, key=int)},
            }
        )
    return {
        "schema": SCHEMA,
        "source": "docs/results/table51.md",
        "generated_by": "scripts/measured_from_table.py",
        "provenance": {
            "harness": "dpface evaluate (the evaluation harness, book Table 5.1 protocol)",
            "date": date_match.group(1),
            "command": command.group(1) if command else bullets["command"],
            "faces": int(faces_match.group(1)),
            "faces_from": faces_match.group(2),
            "protocol": bullets.get("protocol", ""),
            "surrogate_bank": bullets.get("surrogate bank", ""),
            "attackers": bullets.get("attackers", ""),
        },
        "metric": (
            "PSR (protection success rate): share of outputs the attacker no longer matches "
            "to the input face at its own threshold; mean with 95 % confidence interval "
            "(Student t over faces). Re-identification rate = 1 - PSR."
        ),
        "attackers": [
            {"key": key, "name": name, "white_box": white} for _, key, name, white in present
        ],
        "rows": rows,
        "averaging": {
            "command": avg_command.group(1) if avg_command else "",
            "faces": int(avg_limit.group(1)) if avg_limit else None,
            "rows": averaging_rows,
        },
    }


def render(text: str) -> str:
    """The exact bytes of measured.json for the table's markdown."""
    return json.dumps(extract(text), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    wanted = render(TABLE.read_text(encoding="utf-8"))
    if "--check" in argv:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != wanted:
            print(f"{OUT} is out of date: run scripts/measured_from_table.py", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} matches {TABLE.relative_to(ROOT)}")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(wanted, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} from {TABLE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
