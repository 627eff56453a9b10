"""Privacy reports rendered from a ledger: machine-readable JSON and a human HTML page.

The report is written for the person who has to approve a release (a data-protection officer):
what was released, under which guarantee, for how many people; whether the ledger's hash chain
verifies; what the guarantee covers and what it does not; what epsilon means in plain words;
how often the evaluation harness's attackers still re-identified faces for the same
configuration; every person's budget; and a sign-off block that pins the exact ledger state.

``build_report(ledger, run_id=...)`` returns the JSON data (schema ``REPORT_SCHEMA``); with a
``run_id`` it covers only that run's subjects and entries, so a report written into an output
folder never lists the people of other batches sharing the ledger. ``render_html(report)``
renders the self-contained page (charts inlined as SVG); ``write_report`` does both from a
ledger file, which it opens read-only in spirit: it never creates a ledger.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from mechanisms.registry import specs as mechanism_specs

from ._version import __version__
from .ledger import Ledger

__all__ = [
    "CHART_TOP_N",
    "REPORT_SCHEMA",
    "build_report",
    "load_measured",
    "plain_epsilon",
    "render_html",
    "write_report",
]

REPORT_SCHEMA = "dpface.report/2"
CHART_TOP_N = 40  # subjects drawn in the budget chart (the table lists all of them)
TIMELINE_TOP_N = 8  # subjects drawn in the epsilon-over-time chart
MAX_ENTRY_ROWS = 1000  # per-release rows in the HTML (the JSON holds every entry)

# command-line mechanism names -> the ledger's mechanism names (class names), from the registry
CLI_MECHANISMS = {s.name: s.cls.__name__ for s in mechanism_specs(face=True)}
IDENTITY_MECHANISMS = tuple(s.cls.__name__ for s in mechanism_specs(consumes="embedding"))

# run settings shown first, in this order, with a label a non-specialist can read
KNOWN_SETTINGS: tuple[tuple[str, str], ...] = (
    ("purpose", "Purpose"),
    ("mechanism", "Mechanism"),
    ("statement", "Guarantee (as stated by the mechanism)"),
    ("epsilon", "ε per release"),
    ("delta", "δ per release"),
    ("budget_per_release", "Cost of one release"),
    ("budget", "Budget per person"),
    ("default_budget", "Budget per person (default)"),
    ("budget_given", "Budget set explicitly for this run"),
    ("composition", "Accounting"),
    ("is_dp", "Differential privacy"),
    ("seeded", "Randomness"),
    ("pseudonym", "Pseudonym"),
    ("head", "Head around generated faces"),
    ("linking", "Linking faces to people"),
    ("names", "Names of people"),
    ("attribute_steering", "Attribute steering"),
    ("strict", "Strict mode (withhold photos without a face)"),
    ("inputs", "Inputs"),
    ("max_megapixels", "Largest photo accepted (megapixels)"),
    ("detector", "Face detector"),
    ("encoder", "Identity encoder"),
    ("generator", "Face generator"),
    ("model_hashes", "Model files (sha256)"),
    ("dpface_version", "dpface version"),
    ("git_commit", "Source commit"),
)
SUMMARY_COUNTS: tuple[tuple[str, str, str], ...] = (
    ("images", "Photos processed", "every input photo the run wrote or withheld"),
    ("videos", "Videos processed", "every frame searched; a video's faces are counted as tracks"),
    ("faces", "Faces found", "faces the detector found (a face in a video: its track)"),
    ("replaced", "Faces replaced", "replaced by a new identity drawn under the guarantee"),
    ("pixelized", "Faces pixelized", "pixelized with DP noise under the guarantee"),
    (
        "masked",
        "Faces masked",
        "blacked out: the budget check refused the release, or the face could not be replaced",
    ),
    ("refused", "Releases refused", "the budget check said no before any noise was drawn"),
    (
        "uncertain",
        "Unsure detections",
        "boxes the detector was unsure were faces: protected by the charged DP fallback",
    ),
    (
        "fallback",
        "Faces protected by the DP fallback",
        "found, but too small, turned or unsure for the generator: DP pixelization, charged",
    ),
    (
        "head_released",
        "Heads released with DP-Pix",
        "--head dp-pix: the head box around the face (hair, ears, outline) released from "
        "the photo with DP-Pix, charged to the face's person on top of its own release",
    ),
    (
        "head_masked",
        "Heads painted grey",
        "--head mask, or a head release the budget refused: nothing of the head was released",
    ),
    (
        "no_face",
        "Photos without a detected face",
        "written out UNCHANGED (unless withheld): a face the detector missed is not protected",
    ),
    ("withheld", "Photos withheld", "no face found and strict mode was on: not written at all"),
    ("failed", "Photos that failed", "unreadable or unusable inputs: nothing was written"),
)
NEVER_COVERED: tuple[tuple[str, str], ...] = (
    (
        "Faces the detector missed",
        "A face that was not detected is left exactly as it was, with no protection at all. "
        "Photos in which no face was found were written out unchanged.",
    ),
    (
        "Everything outside the face regions",
        "Background, hair beyond the face box, clothing, body, tattoos, text, objects and "
        "places in the photo are not changed and not covered by any guarantee.",
    ),
    (
        "The raw matching when linking is on",
        "Linking unnamed faces to known people compares raw face templates on the trusted "
        "side; which budget is charged and which pseudonym is reused then depend on that "
        "matching, which no mechanism covers. The ledger holds those templates: keep it on "
        "the trusted side.",
    ),
    (
        "Different photos of an unnamed person",
        "A face nobody named is its own privacy unit, keyed by a digest of that photo. The same "
        "person in two different photos counts as two units whose budgets do not add up: the "
        "guarantee then holds per photo, not per person.",
    ),
)


# ---------------------------------------------------------------------------------- helpers
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(x: float) -> str:
    """A number for people: up to 4 significant digits, no exponent for everyday sizes."""
    if math.isinf(x):
        return "∞"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e6:
        return f"{x:.4g}"
    mant, exp = f"{x:.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant} × 10^{int(exp)}"


def _factor(epsilon: float) -> str:
    """e^ε, readable for any ε (never overflows)."""
    if epsilon < 700:
        value = math.exp(epsilon)
        if value < 10:
            return f"{value:.2f}"
        if value < 1e6:
            return f"{value:,.0f}"
    exp10 = epsilon / math.log(10)
    whole = math.floor(exp10)
    return f"{10 ** (exp10 - whole):.1f} × 10^{whole}"


def _posterior(epsilon: float) -> str:
    """How sure an observer who started at 50/50 can become: e^ε / (1 + e^ε), as a percent."""
    if epsilon <= 14:
        p = 100.0 / (1.0 + math.exp(-epsilon))
        for digits in range(1, 6):
            text = f"{p:.{digits}f}"
            if float(text) < 100.0:
                return f"up to {text} %"
    return "over 99.9999 %"


def _strength(epsilon: float) -> tuple[str, str, str]:
    """A short reading of ε, a sentence saying what it means, and a CSS class."""
    if epsilon <= 1:
        return "strong", "a strong bound", "ok"
    if epsilon <= 3:
        return "moderate", "a moderate bound", "warn"
    if epsilon <= 8:
        return "weak", "a weak bound", "bad"
    return "very weak", "a very weak bound: on its own it promises almost nothing", "bad"


def plain_epsilon(epsilon: float, delta: float = 0.0) -> dict[str, Any]:
    """ε (and δ) in plain words: the factor e^ε by which an observer's odds can change."""
    strength, reading, css = _strength(epsilon)
    factor = _factor(epsilon)
    posterior = _posterior(epsilon)
    text = (
        f"An observer's odds of telling whether this person's face was in the input change by "
        f"at most a factor e^ε = e^{_num(epsilon)} ≈ {factor}"
    )
    if delta > 0:
        text += f", except with probability δ = {_num(delta)}"
    text += f". Someone who started at 50/50 can become {posterior} sure: {reading}."
    return {
        "epsilon": epsilon,
        "delta": delta,
        "factor": math.exp(epsilon) if epsilon < 700 else None,
        "factor_text": factor,
        "fifty_fifty_becomes": posterior,
        "strength": strength,
        "reading": reading,
        "css": css,
        "text": text,
    }


def _unnamed(subject: str) -> bool:
    return subject.startswith(("face:", "unlinked:"))


def _json_safe(value: Any) -> Any:
    """Settings and summaries as JSON data (infinities as strings, unknown objects as text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------- measured
@cache
def _measured_text() -> str:
    return (resources.files("dpface") / "data" / "measured.json").read_text(encoding="utf-8")


def load_measured() -> dict[str, Any]:
    """The packaged measurements (dpface/data/measured.json, from docs/results/table51.md)."""
    data: dict[str, Any] = json.loads(_measured_text())
    return data


def _as_float(eps: Any) -> float | None:
    if eps is None:
        return None
    return math.inf if eps == "inf" else float(eps)


def _nearest(rows: list[dict[str, Any]], epsilon: float) -> dict[str, Any] | None:
    """The measured row closest to ε on a log scale (ties go to the larger, weaker ε)."""
    finite = [r for r in rows if (e := _as_float(r["epsilon"])) is not None and math.isfinite(e)]
    if not finite:
        return None
    target = math.log(max(epsilon, 1e-12))
    return min(
        finite,
        key=lambda r: (abs(math.log(float(r["epsilon"])) - target), -float(r["epsilon"])),
    )


def _attacker_rows(
    measured: dict[str, Any], values: Mapping[str, Mapping[str, float]], *, identity: bool
) -> list[dict[str, Any]]:
    """Every attacker's PSR and re-identification rate; ``identity``: an identity mechanism
    (whose encoder a white-box attacker shares)."""
    out = []
    for att in measured["attackers"]:
        v = values.get(att["key"])
        if v is None:
            continue
        if not att["white_box"]:
            note = "independent recogniser, never used inside dpface"
        elif identity:
            note = "white-box: the recogniser inside this mechanism (the strongest attacker here)"
        else:
            note = "the recogniser dpface's identity mechanisms use; this mechanism uses none"
        out.append(
            {
                "attacker": att["name"],
                "white_box": att["white_box"] and identity,
                "note": note,
                "psr": v["psr"],
                "psr_ci95": [v["ci95_low"], v["ci95_high"]],
                "reidentified": round(1.0 - v["psr"], 6),
                "reidentified_ci95": [
                    round(1.0 - v["ci95_high"], 6),
                    round(1.0 - v["ci95_low"], 6),
                ],
            }
        )
    return out


def _measured_section(
    configs: list[tuple[str, float]],
    masked: bool,
    max_releases: int,
    seeded: set[tuple[str, float]] | frozenset[tuple[str, float]] = frozenset(),
) -> dict[str, Any]:
    """Measured rows for each (mechanism, ε per release) of the report, for every attacker."""
    measured = load_measured()
    rows_by_mech: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in measured["rows"]:
        if row["mechanism"]:
            rows_by_mech[row["mechanism"]].append(row)
    matches = []
    for mechanism, epsilon in configs:
        row = _nearest(rows_by_mech.get(mechanism, []), epsilon)
        if row is None:
            matches.append(
                {
                    "mechanism": mechanism,
                    "epsilon": epsilon,
                    "measured": False,
                    "note": (
                        f"No measurement of {mechanism} is packaged with dpface. Run "
                        "`dpface evaluate` for this configuration before relying on it."
                    ),
                }
            )
            continue
        m_eps = float(row["epsilon"])
        exact = math.isclose(m_eps, epsilon, rel_tol=1e-9)
        note = (
            f"Measured at exactly ε = {_num(m_eps)}."
            if exact
            else f"No measurement at ε = {_num(epsilon)}; the nearest measured ε is "
            f"{_num(m_eps)} (shown)."
        )
        if row["parameters"]:
            params = ", ".join(f"{k} = {v}" for k, v in row["parameters"].items())
            note += f" Measured with {params}."
        if (mechanism, epsilon) in seeded:
            note += (
                " Some of these releases were SEEDED: the measurement assumes secret noise; "
                "anyone who knows the seed can undo a seeded release."
            )
        matches.append(
            {
                "mechanism": mechanism,
                "epsilon": epsilon,
                "measured": True,
                "method": row["method"],
                "measured_epsilon": m_eps,
                "exact": exact,
                "note": note,
                "attackers": _attacker_rows(
                    measured, row["attackers"], identity=mechanism in IDENTITY_MECHANISMS
                ),
            }
        )
    identity = any(m in IDENTITY_MECHANISMS for m, _ in configs)
    references = []
    for row in measured["rows"]:
        is_mask = row["method"] == "Black mask" and masked
        is_no_noise = row["method"].startswith("dpface generator") and identity
        if is_mask or is_no_noise:
            references.append(
                {
                    "method": row["method"],
                    "attackers": _attacker_rows(measured, row["attackers"], identity=is_no_noise),
                }
            )
    averaging = []
    if max_releases > 1:
        for row in measured["averaging"]["rows"]:
            if not any(m == row["mechanism"] for m, _ in configs):
                continue
            averaging.append(
                {
                    "method": row["method"],
                    "epsilon": _as_float(row["epsilon"]),
                    "releases": {
                        n: _attacker_rows(measured, values, identity=True)
                        for n, values in row["releases"].items()
                    },
                }
            )
    return {
        "provenance": {**measured["provenance"], "source": measured["source"]},
        "metric": measured["metric"],
        "faces": measured["provenance"]["faces"],
        "matches": matches,
        "references": references,
        "averaging": {
            "command": measured["averaging"]["command"],
            "faces": measured["averaging"]["faces"],
            "max_releases_of_one_subject": max_releases,
            "rows": averaging,
        },
    }


# ---------------------------------------------------------------------------------- settings
def _display_value(key: str, value: Any) -> dict[str, Any]:
    """One setting as something a template can render: text, a list, or key/value pairs."""
    flag = ""
    if key == "seeded":
        if value:
            return {"text": "SEEDED: reproducible, NOT private", "flag": "bad"}
        return {"text": "cryptographically secure (not seeded)", "flag": ""}
    if key == "is_dp":
        if value is False:
            return {
                "text": "NO: these releases carry no differential-privacy guarantee",
                "flag": "bad",
            }
        return {"text": "yes", "flag": ""}
    if key == "linking" and value and str(value).lower() not in ("none", "off", "false", "no"):
        flag = "warn"
    if key == "model_hashes" and isinstance(value, Mapping):
        pairs = [
            (str(k), f"{str(v)[:16]}…" if len(str(v)) > 16 else str(v)) for k, v in value.items()
        ]
        return {"pairs": pairs, "flag": flag, "compact": True}
    if isinstance(value, Mapping):
        pairs = [(str(k), _short(v)) for k, v in value.items()]
        return {"pairs": pairs, "flag": flag}
    if isinstance(value, (list, tuple)):
        return {"values": [_short(v) for v in value], "flag": flag}
    return {"text": _short(value), "flag": flag}


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _num(value)
    if value is None:
        return "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_short(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_short(v) for v in value)
    return str(value)


def _settings_rows(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    no_purpose = not settings.get("purpose")
    if no_purpose:
        rows.append(
            {
                "key": "purpose",
                "label": "Purpose",
                "flag": "warn",
                "text": "none recorded with the run: write it in the sign-off (section 9)",
            }
        )
    known = dict(KNOWN_SETTINGS)
    order = [k for k, _ in KNOWN_SETTINGS if k in settings and not (k == "purpose" and no_purpose)]
    order += sorted(k for k in settings if k not in known and k != "channels")
    for key in order:
        label = known.get(key, key.replace("_", " ").capitalize())
        rows.append({"key": key, "label": label, **_display_value(key, settings[key])})
    return rows


def _summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A run's summary counts, the known ones first in a fixed order."""
    known = [k for k, _, _ in SUMMARY_COUNTS]
    order = [k for k in known if k in summary] + sorted(k for k in summary if k not in known)
    return [(k.replace("_", " "), _short(summary[k])) for k in order]


def _linking_on(settings: Mapping[str, Any]) -> bool:
    value = settings.get("linking")
    return bool(value) and str(value).lower() not in ("none", "off", "false", "no")


# ---------------------------------------------------------------------------------- build
def _verification(ledger: Ledger) -> dict[str, Any]:
    v = ledger.verify()
    problems = [str(p) for p in (v.problems or [])]
    return {"ok": bool(v.ok), "entries": int(v.entries), "head": v.head, "problems": problems}


def _refusal_reason(refusal: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    """Why the budget check said no, from the subject's entries before the refusal."""
    budget: tuple[float, float] | None = None
    eps = delta = 0.0
    for e in history:
        if e["id"] >= refusal["id"]:
            break
        if e["kind"] == "budget":
            budget = (float(e["epsilon"]), float(e["delta"]))
        elif e["kind"] == "release":
            eps += float(e["epsilon"])
            delta += float(e["delta"])
    if budget is None:
        return "no budget was set for this subject"
    b_eps, b_delta = budget
    asked_eps, asked_delta = float(refusal["epsilon"]), float(refusal["delta"])
    if asked_delta > 0 and b_delta == 0:
        return f"the budget is pure ε (δ = 0) and this mechanism needs δ = {_num(asked_delta)}"
    if delta + asked_delta > b_delta * (1 + 1e-9) and eps + asked_eps <= b_eps * (1 + 1e-9):
        return (
            f"δ used up: {_num(delta)} of δ = {_num(b_delta)} spent, this release needed "
            f"{_num(asked_delta)} more"
        )
    return (
        f"ε used up: {_num(eps)} of ε = {_num(b_eps)} spent (sum of releases), this "
        f"release needed {_num(asked_eps)} more"
    )


def _redact(problem: str, names: set[str]) -> str:
    for name in names:
        problem = problem.replace(repr(name), "(a subject of another run)")
    return problem


def _entry(ev: Mapping[str, Any], run_numbers: Mapping[str, int]) -> dict[str, Any]:
    return {
        "id": ev["id"],
        "kind": ev.get("kind", "release"),
        "subject": ev["subject"],
        "mechanism": ev["mechanism"],
        "epsilon": ev["epsilon"],
        "delta": ev["delta"],
        "run_id": ev["run_id"],
        "run": run_numbers.get(ev["run_id"]),
        "note": ev.get("note", ""),
        "seeded": bool(ev.get("seeded", False)),
        "is_dp": bool(ev.get("is_dp", True)),
        "time": _iso(ev["created_at"]),
        "created_at": ev["created_at"],
        "hash": ev.get("hash"),
    }


def build_report(ledger: Ledger, *, run_id: str | None = None) -> dict[str, Any]:
    """The report as plain JSON data: the whole ledger, or only run ``run_id``'s entries."""
    all_runs = sorted(ledger.runs(), key=lambda r: (r["started_at"] or 0.0, r["run_id"]))
    run_numbers = {r["run_id"]: i + 1 for i, r in enumerate(all_runs)}
    runs = [r for r in all_runs if run_id is None or r["run_id"] == run_id]
    raw = ledger.events(run_id=run_id, kinds=("release", "refusal", "budget"))
    if run_id is not None and not runs and not raw:
        raise ValueError(f"the ledger has no run {run_id!r}")
    everything = [_entry(ev, run_numbers) for ev in raw]
    entries = [e for e in everything if e["kind"] in ("release", "refusal")]
    releases = [e for e in entries if e["kind"] == "release"]
    refusals = [e for e in entries if e["kind"] == "refusal"]
    budget_changes = [
        e for e in everything if e["kind"] == "budget" and e["mechanism"] == "budget:change"
    ]
    verification = _verification(ledger)
    histories: dict[str, list[dict[str, Any]]] = {}
    for e in refusals:
        if e["subject"] not in histories:
            histories[e["subject"]] = ledger.events(e["subject"], kinds=("release", "budget"))
        e["reason"] = _refusal_reason(e, histories[e["subject"]])

    subject_names = list(ledger.subjects(run_id=run_id))
    seen = set(subject_names)
    subject_names += sorted({e["subject"] for e in entries} - seen)
    if run_id is not None and verification["problems"]:
        # a run's report names no one outside the run, not even in the chain's problems
        others = set(ledger.subjects()) - set(subject_names)
        verification["problems"] = [_redact(p, others) for p in verification["problems"]]
    rel_by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ref_by_subject: Counter[str] = Counter()
    for e in releases:
        rel_by_subject[e["subject"]].append(e)
    for e in refusals:
        ref_by_subject[e["subject"]] += 1
    subjects: list[dict[str, Any]] = []
    for name in subject_names:
        budget = ledger.budget(name)
        spent = ledger.spent(name)
        remaining = ledger.remaining(name)
        mine = rel_by_subject.get(name, [])
        all_releases, before = len(mine), 0.0
        if run_id is not None:
            history = ledger.events(name)
            all_releases = len(history)
            first = mine[0]["id"] if mine else math.inf
            before = math.fsum(e["epsilon"] for e in history if e["id"] < first)
        fraction = (
            spent.epsilon / budget.epsilon if budget is not None and budget.epsilon > 0 else None
        )
        subjects.append(
            {
                "subject": name,
                "unnamed": _unnamed(name),
                "budget": None
                if budget is None
                else {"epsilon": budget.epsilon, "delta": budget.delta},
                "spent": {"epsilon": spent.epsilon, "delta": spent.delta},
                "spent_fraction": fraction,
                "remaining_epsilon": remaining if math.isfinite(remaining) else None,
                "exhausted": budget is not None and remaining <= 1e-12,
                "releases": len(mine),
                "releases_all_runs": all_releases,
                "spent_in_scope": {
                    "epsilon": math.fsum(e["epsilon"] for e in mine),
                    "delta": math.fsum(e["delta"] for e in mine),
                },
                "epsilon_before_scope": before,
                "refusals": ref_by_subject.get(name, 0),
                "seeded": any(e["seeded"] for e in mine),
                "not_dp": any(not e["is_dp"] for e in mine),
                "mechanisms": dict(Counter(e["mechanism"] for e in mine)),
                "plain": plain_epsilon(spent.epsilon, spent.delta),
            }
        )
    subjects.sort(
        key=lambda s: (-(s["spent_fraction"] or 0.0), -s["spent"]["epsilon"], s["subject"])
    )

    # guarantees, per mechanism
    mechanisms: dict[str, dict[str, Any]] = {}
    for e in releases:
        m = mechanisms.setdefault(
            e["mechanism"],
            {
                "releases": 0,
                "subjects": set(),
                "statements": [],
                "per_release": set(),
                "seeded_releases": 0,
                "not_dp_releases": 0,
            },
        )
        m["releases"] += 1
        m["subjects"].add(e["subject"])
        m["per_release"].add((e["epsilon"], e["delta"]))
        m["seeded_releases"] += e["seeded"]
        m["not_dp_releases"] += not e["is_dp"]
        if e["note"] and e["note"] not in m["statements"]:
            m["statements"].append(e["note"])
    mech_json = {
        name: {
            "releases": m["releases"],
            "subjects": len(m["subjects"]),
            "statements": m["statements"],
            "guarantees": m["statements"],  # report/1 name, kept for readers of that schema
            "per_release": [{"epsilon": e, "delta": d} for e, d in sorted(m["per_release"])],
            "seeded_releases": m["seeded_releases"],
            "not_dp_releases": m["not_dp_releases"],
        }
        for name, m in sorted(mechanisms.items())
    }

    # channels recorded by the runs
    covered: list[str] = []
    uncovered: list[str] = []
    channel_notes: list[str] = []
    for r in runs:
        ch = (r.get("settings") or {}).get("channels") or {}
        covered += [c for c in ch.get("covered", []) if c not in covered]
        uncovered += [c for c in ch.get("uncovered", []) if c not in uncovered]
        channel_notes += [c for c in ch.get("notes", []) if c not in channel_notes]
    linking = any(_linking_on(r.get("settings") or {}) for r in runs)

    # counts: the runs' own summaries, refusals from the ledger
    counts: dict[str, int] = {}
    summaries = [r.get("summary") for r in runs]
    have_summary = [s for s in summaries if s]
    for key, _, _ in SUMMARY_COUNTS:
        counts[key] = sum(int(s.get(key, 0) or 0) for s in have_summary)
    counts["unchanged"] = max(counts["no_face"] - counts["withheld"], 0)
    counts["refusals_in_ledger"] = len(refusals)
    counts["releases_in_ledger"] = len(releases)
    unfinished = [run_numbers[r["run_id"]] for r in runs if r.get("finished_at") is None]
    count_rows = [
        {"key": key, "label": label, "help": help_, "value": counts[key]}
        for key, label, help_ in SUMMARY_COUNTS
    ]

    # epsilon in plain words
    per_release = sorted({(e["epsilon"], e["delta"]) for e in releases})
    totals = Counter((round(s["spent"]["epsilon"], 9), s["spent"]["delta"]) for s in subjects)
    plain = {
        "per_release": [plain_epsilon(e, d) for e, d in per_release],
        "subject_totals": [
            {**plain_epsilon(e, d), "subjects": n}
            for (e, d), n in sorted(totals.items(), key=lambda kv: -kv[0][0])
            if e > 0
        ],
    }

    configs = sorted({(e["mechanism"], e["epsilon"]) for e in releases if e["is_dp"]})
    masked = counts["masked"] > 0 or bool(refusals)
    max_rel = max((s["releases_all_runs"] for s in subjects), default=0)
    seeded_configs = {(e["mechanism"], e["epsilon"]) for e in releases if e["seeded"]}
    measured = _measured_section(configs, masked, max_rel, seeded_configs)

    seeded_n = sum(e["seeded"] for e in releases)
    not_dp_n = sum(not e["is_dp"] for e in releases)
    seeded_runs = [
        run_numbers[r["run_id"]] for r in runs if (r.get("settings") or {}).get("seeded")
    ]
    alerts = []
    if not verification["ok"]:
        alerts.append(
            {
                "level": "bad",
                "text": "The ledger's hash chain does NOT verify: entries were "
                "changed, removed or inserted after they were written. Do not sign before this is "
                "explained.",
                "problems": verification["problems"],
            }
        )
    if seeded_n or seeded_runs:
        alerts.append(
            {
                "level": "bad",
                "text": f"{seeded_n} release(s) used SEEDED randomness"
                + (f" (run {', '.join(map(str, seeded_runs))})" if seeded_runs else "")
                + ": their noise can be reproduced by anyone who knows the seed, so they are NOT "
                "private, whatever ε says.",
                "problems": [],
            }
        )
    if not_dp_n:
        alerts.append(
            {
                "level": "bad",
                "text": f"{not_dp_n} release(s) carry NO differential-privacy "
                "guarantee (a paper-compatible or otherwise non-DP setting).",
                "problems": [],
            }
        )
    if counts["unchanged"]:
        alerts.append(
            {
                "level": "warn",
                "text": f"{counts['unchanged']} photo(s) had no detected face and "
                "were written out unchanged: check them for faces the detector missed.",
                "problems": [],
            }
        )
    if refusals:
        alerts.append(
            {
                "level": "warn",
                "text": f"{len(refusals)} release(s) were refused by the budget "
                "check (the reasons are in section 7); those faces were masked, no noise was "
                "drawn.",
                "problems": [],
            }
        )
    if unfinished:
        alerts.append(
            {
                "level": "warn",
                "text": f"Run {', '.join(map(str, unfinished))} has no finish "
                "record (still running, or it stopped): its photo counts are missing.",
                "problems": [],
            }
        )

    guarantee_line = "; ".join(
        f"{name}: "
        + ", ".join(
            f"ε = {_num(p['epsilon'])}" + (f", δ = {_num(p['delta'])}" if p["delta"] else "")
            for p in m["per_release"]
        )
        + " per release"
        for name, m in mech_json.items()
    )
    people = len(subjects)
    unnamed = sum(s["unnamed"] for s in subjects)
    budgets_seen = sorted(
        {(s["budget"]["epsilon"], s["budget"]["delta"]) for s in subjects if s["budget"]}
    )
    outcome = None
    if have_summary:
        media = f"{counts['images']} photo(s)"
        if counts["videos"]:
            media += f" and {counts['videos']} video(s)"
        parts = [f"{media} with {counts['faces']} face(s)"]
        for key, word in (
            ("replaced", "replaced by new identities"),
            ("pixelized", "pixelized"),
            ("masked", "masked"),
        ):
            if counts[key]:
                parts.append(f"{counts[key]} face(s) {word}")
        if counts["unchanged"]:
            parts.append(f"{counts['unchanged']} photo(s) without a detected face, left unchanged")
        if counts["withheld"]:
            parts.append(f"{counts['withheld']} photo(s) without a detected face, withheld")
        if counts["failed"]:
            parts.append(f"{counts['failed']} photo(s) failed")
        outcome = "; ".join(parts)
    purposes = []
    for r in runs:
        p = (r.get("settings") or {}).get("purpose")
        if p and p not in purposes:
            purposes.append(str(p))
    status = "bad" if any(a["level"] == "bad" for a in alerts) else ("warn" if alerts else "ok")
    report: dict[str, Any] = _json_safe(
        {
            "schema": REPORT_SCHEMA,
            "generated_at": _iso(dt.datetime.now(tz=dt.UTC).timestamp()),
            "dpface_version": __version__,  # the dpface that wrote this report
            "scope": {
                "run_id": run_id,
                "run": run_numbers.get(run_id) if run_id is not None else None,
                "description": (
                    f"run {run_numbers.get(run_id, '?')} only ({run_id}): other runs sharing the "
                    "ledger are not listed"
                    if run_id is not None
                    else f"the whole ledger ({len(all_runs)} run(s))"
                ),
            },
            "ledger": {
                "file": Path(str(ledger.path)).name,
                "composition": ledger.composition,
                "verification": verification,
            },
            "composition": ledger.composition,
            "summary": {
                "status": status,
                "released": (
                    f"{len(releases)} release(s) through a mechanism for {people} privacy unit(s)"
                    + (f" ({unnamed} of them unnamed faces)" if unnamed else "")
                ),
                "guarantee": guarantee_line or "nothing was released",
                "outcome": outcome,
                "budgets": [{"epsilon": e, "delta": d} for e, d in budgets_seen],
                "people": people,
                "unnamed": unnamed,
                "releases": len(releases),
                "refusals": len(refusals),
                "seeded_releases": seeded_n,
                "not_dp_releases": not_dp_n,
                "alerts": alerts,
            },
            "totals": {"subjects": people, "releases": len(releases), "refusals": len(refusals)},
            "runs": [
                {
                    "run": run_numbers[r["run_id"]],
                    "run_id": r["run_id"],
                    "started_at": _iso(r.get("started_at")),
                    "finished_at": _iso(r.get("finished_at")),
                    "settings": _json_safe(r.get("settings") or {}),
                    "summary": _json_safe(r.get("summary") or {}),
                }
                for r in runs
            ],
            "counts": {
                **counts,
                "from_run_summaries": bool(have_summary),
                "unfinished_runs": unfinished,
                "rows": count_rows,
            },
            "guarantee": {
                "mechanisms": mech_json,
                "channels": {"covered": covered, "uncovered": uncovered, "notes": channel_notes}
                if covered or uncovered
                else None,
                "linking": linking,
                "never_covered": [{"what": w, "why": y} for w, y in NEVER_COVERED],
            },
            "epsilon_plain": plain,
            "measured": measured,
            "subjects": subjects,
            "events": releases,
            "refusals": refusals,
            "budget_changes": budget_changes,
            "signoff": {
                "purpose": purposes,
                "fields": ["name", "role", "date", "signature"],
                "ledger_head": verification["head"],
                "chain_length": verification["entries"],
                "chain_ok": verification["ok"],
            },
        }
    )
    return report


# ---------------------------------------------------------------------------------- charts
def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return base64.b64encode(buf.getvalue().encode("utf-8")).decode("ascii")


def _label(name: str, width: int = 30) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _budget_chart(plt: Any, subjects: Sequence[Mapping[str, Any]]) -> str | None:
    shown = [s for s in subjects if s["budget"] is not None or s["spent"]["epsilon"] > 0]
    shown = list(shown[:CHART_TOP_N])
    if not shown:
        return None
    shown.reverse()  # largest share at the top
    n = len(shown)
    fig, ax = plt.subplots(figsize=(8.6, 0.9 + 0.27 * n))
    ys = list(range(n))
    budgets = [s["budget"]["epsilon"] if s["budget"] else 0.0 for s in shown]
    spent = [s["spent"]["epsilon"] for s in shown]
    colours = ["#b3261e" if s["exhausted"] else "#2f6db3" for s in shown]
    ax.barh(ys, budgets, height=0.7, color="#e3e9f1", edgecolor="#b8c4d4", label="budget")
    ax.barh(ys, spent, height=0.7, color=colours, label="spent")
    top = max([*budgets, *spent, 1e-9])
    for y, b, sp in zip(ys, budgets, spent, strict=True):
        text = f"{_num(sp)} of {_num(b)}" if b else f"{_num(sp)} (no budget)"
        ax.text(max(b, sp) + top * 0.01, y, text, va="center", fontsize=8, color="#333")
    ax.set_yticks(ys, [_label(s["subject"]) for s in shown], fontsize=8)
    ax.set_xlim(0, top * 1.22)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("ε (privacy loss): spent of budget")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="#eee")
    ax.set_axisbelow(True)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(facecolor="#e3e9f1", edgecolor="#b8c4d4", label="budget"),
            Patch(facecolor="#2f6db3", label="spent"),
            Patch(facecolor="#b3261e", label="spent: budget used up"),
        ],
        frameon=False,
        fontsize=8,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=3,
    )
    out = _svg(fig)
    plt.close(fig)
    return out


def _timeline_chart(
    plt: Any, events: Sequence[Mapping[str, Any]], subjects: Sequence[Mapping[str, Any]]
) -> str | None:
    """Running ε per person against the releases in time order, runs shaded and dated.

    The x axis counts releases rather than seconds: runs minutes or months apart stay readable
    and a run of many releases in one second does not collapse into a vertical line.
    """
    if not events:
        return None
    spent_here: Counter[str] = Counter()
    for ev in events:
        spent_here[ev["subject"]] += ev["epsilon"]
    top = [name for name, _ in sorted(spent_here.items(), key=lambda kv: (-kv[1], kv[0]))]
    top = top[:TIMELINE_TOP_N]
    n = len(events)
    series: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in top}
    running: dict[str, float] = defaultdict(float)
    for s in subjects:  # a run's report starts each person where earlier runs left them
        running[s["subject"]] = float(s.get("epsilon_before_scope", 0.0))
    spans: dict[Any, list[int]] = {}
    starts: dict[Any, float] = {}
    for i, ev in enumerate(events, start=1):
        running[ev["subject"]] += ev["epsilon"]
        key = ev.get("run") or ev["run_id"]
        spans.setdefault(key, [i, i])[1] = i
        starts.setdefault(key, ev["created_at"])
        if ev["subject"] in series:
            xs, ys = series[ev["subject"]]
            if not xs:
                xs.append(i - 0.5)
                ys.append(running[ev["subject"]] - ev["epsilon"])
            xs.append(i)
            ys.append(running[ev["subject"]])
    fig, ax = plt.subplots(figsize=(8.6, 3.8))
    for k, (key, (lo, hi)) in enumerate(spans.items()):
        ax.axvspan(lo - 0.5, hi + 0.5, color="#eef2f7" if k % 2 == 0 else "#ffffff", zorder=0)
        share = (hi - lo + 1) / n
        if len(spans) <= 12 and share >= 0.04:
            label = f"run {key}" if isinstance(key, int) else "no run record"
            if share >= 0.15:  # room for the date too
                when = dt.datetime.fromtimestamp(starts[key], tz=dt.UTC)
                label += "\n" + when.strftime("%d %b %Y %H:%M")
            ax.annotate(
                label,
                xy=(lo - 0.4, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -4),
                textcoords="offset points",
                fontsize=7,
                color="#5b6673",
                va="top",
            )
    marker = "o" if n <= 200 else None
    for name in top:
        xs, ys = series[name]
        ax.plot(
            [*xs, n + 0.5],
            [*ys, ys[-1]],
            drawstyle="steps-post",
            marker=marker,
            markevery=list(range(1, len(xs))),  # a dot per release, none at the ends
            markersize=3,
            linewidth=1.6,
            label=_label(name, 24),
            zorder=3,
        )
    budgets = {s["budget"]["epsilon"] for s in subjects if s["subject"] in top and s["budget"]}
    if len(budgets) == 1:
        b = budgets.pop()
        ax.axhline(b, color="#b3261e", linestyle="--", linewidth=1, zorder=2)
        ax.annotate(
            f"budget ε = {_num(b)}",
            xy=(1.0, b),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 3),
            textcoords="offset points",
            fontsize=8,
            color="#b3261e",
            ha="right",
        )
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylim(
        0,
        max([*running.values(), *(s["spent"]["epsilon"] for s in subjects if s["subject"] in top)])
        * 1.25
        + 1e-9,
    )
    ax.set_ylabel("ε spent so far (sum)")
    ax.set_xlabel("releases in time order (shaded bands: runs, with their start in UTC)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", color="#e6e6e6")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    out = _svg(fig)
    plt.close(fig)
    return out


def _charts(report: Mapping[str, Any]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_subjects = len([s for s in report["subjects"] if s["budget"] or s["spent"]["epsilon"]])
    with plt.rc_context({"svg.fonttype": "none", "font.family": "sans-serif"}):
        budget = _budget_chart(plt, report["subjects"])
        timeline = _timeline_chart(plt, report["events"], report["subjects"])
    return {
        "budget": budget,
        "budget_shown": min(n_subjects, CHART_TOP_N),
        "budget_total": n_subjects,
        "timeline": timeline,
        "timeline_shown": min(len({e["subject"] for e in report["events"]}), TIMELINE_TOP_N),
        "timeline_total": len({e["subject"] for e in report["events"]}),
    }


# ---------------------------------------------------------------------------------- render
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("dpface", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["num"] = lambda x: "—" if x is None else _num(float(x))
_ENV.filters["pct"] = lambda x: f"{100 * float(x):.0f} %"
_ENV.filters["short"] = lambda h: "—" if not h else f"{str(h)[:12]}…"


def _sup(text: Any) -> markupsafe.Markup:
    """Escape, then show "10^13" as 10 with a superscript 13."""
    escaped = str(markupsafe.escape(str(text)))
    return markupsafe.Markup(re.sub(r"\^(-?[0-9.]+)", r"<sup>\1</sup>", escaped))


_ENV.filters["sup"] = _sup


def _provenance(
    runs: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Settings rows per run: the first run in full, later ones only where they differ from
    the run before (so the differences stand out); and which run each is compared with."""
    settings: dict[str, list[dict[str, Any]]] = {}
    same_as: dict[str, int] = {}
    labels = dict(KNOWN_SETTINGS)
    for i, run in enumerate(runs):
        current = run["settings"]
        if i == 0:
            settings[run["run_id"]] = _settings_rows(current)
            continue
        before = runs[i - 1]["settings"]
        changed = {k: v for k, v in current.items() if before.get(k) != v}
        rows = _settings_rows({**changed, "purpose": current.get("purpose")})
        rows += [
            {"key": k, "label": labels.get(k, k), "text": "(not recorded)", "flag": ""}
            for k in before
            if k not in current
        ]
        settings[run["run_id"]] = rows
        same_as[run["run_id"]] = runs[i - 1]["run"]
    return settings, same_as


def render_html(report: Mapping[str, Any]) -> str:
    """The human report (one self-contained HTML page, charts inlined as SVG)."""
    settings, same_as = _provenance(report["runs"])
    summaries = {r["run_id"]: _summary_rows(r["summary"]) for r in report["runs"]}
    return _ENV.get_template("report.html.j2").render(
        r=report,
        charts=_charts(report),
        settings=settings,
        same_as=same_as,
        summaries=summaries,
        max_rows=MAX_ENTRY_ROWS,
    )


def _write_atomic(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def write_report(
    ledger_path: str | Path,
    html_out: str | Path,
    json_out: str | Path | None = None,
    *,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Render the ledger at ``ledger_path`` to HTML (and JSON), each written atomically.

    The ledger is opened with ``create=False``: a missing file raises ``FileNotFoundError`` and
    a file that is not a ledger raises ``NotALedgerError``; neither is created or changed.
    """
    with Ledger(Path(ledger_path), create=False) as ledger:
        report = build_report(ledger, run_id=run_id)
    html = render_html(report)
    _write_atomic(Path(html_out), html)
    if json_out is not None:
        _write_atomic(Path(json_out), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
