"""Privacy reports rendered from a ledger: machine-readable JSON and a human HTML page.

The JSON has a versioned schema (``REPORT_SCHEMA``); the HTML is self-contained (plots inlined as
PNG) so it can be attached to a data-sharing request and read offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jinja2

from .ledger import Ledger

__all__ = ["REPORT_SCHEMA", "build_report", "render_html", "write_report"]

REPORT_SCHEMA = "dpface.report/1"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="seconds")


def build_report(ledger: Ledger) -> dict[str, Any]:
    """Everything the ledger knows, per subject and per mechanism, as plain JSON data."""
    events = ledger.events()
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_subject[ev["subject"]].append(ev)
    subjects = []
    for subject in ledger.subjects():
        budget = ledger.budget(subject)
        spent = ledger.spent(subject)
        evs = by_subject.get(subject, [])
        subjects.append(
            {
                "subject": subject,
                "budget": None
                if budget is None
                else {"epsilon": budget.epsilon, "delta": budget.delta},
                "spent": {"epsilon": spent.epsilon, "delta": spent.delta},
                "remaining_epsilon": ledger.remaining(subject),
                "releases": len(evs),
                "mechanisms": dict(Counter(e["mechanism"] for e in evs)),
            }
        )
    mechanisms: dict[str, dict[str, Any]] = {}
    for ev in events:
        entry = mechanisms.setdefault(
            ev["mechanism"], {"releases": 0, "guarantees": set(), "subjects": set()}
        )
        entry["releases"] += 1
        entry["subjects"].add(ev["subject"])
        if ev["note"]:
            entry["guarantees"].add(ev["note"])
    return {
        "schema": REPORT_SCHEMA,
        "generated_at": _iso(dt.datetime.now(tz=dt.UTC).timestamp()),
        "ledger": str(ledger.path),
        "composition": ledger.composition,
        "totals": {
            "subjects": len(subjects),
            "releases": len(events),
            "refusals_are_not_recorded": True,
        },
        "subjects": subjects,
        "mechanisms": {
            name: {
                "releases": v["releases"],
                "subjects": len(v["subjects"]),
                "guarantees": sorted(v["guarantees"]),
            }
            for name, v in sorted(mechanisms.items())
        },
        "events": [
            {
                "id": ev["id"],
                "subject": ev["subject"],
                "mechanism": ev["mechanism"],
                "epsilon": ev["epsilon"],
                "delta": ev["delta"],
                "run_id": ev["run_id"],
                "time": _iso(ev["created_at"]),
            }
            for ev in events
        ],
    }


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(report: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    subjects = report["subjects"][:60]
    if subjects:
        names = [s["subject"] for s in subjects]
        spent = [s["spent"]["epsilon"] for s in subjects]
        budget = [s["budget"]["epsilon"] if s["budget"] else 0.0 for s in subjects]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(names) + 2), 3.2))
        ax.bar(names, budget, color="#dde6f0", label="budget")
        ax.bar(names, spent, color="#2f6db3", label="spent")
        ax.set_ylabel("epsilon")
        ax.set_title("Budget spent per subject")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        plots["spent"] = _png(fig)
        plt.close(fig)
    events = report["events"]
    if events:
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        cumulative: dict[str, float] = defaultdict(float)
        series: dict[str, tuple[list[dt.datetime], list[float]]] = defaultdict(lambda: ([], []))
        for ev in events:
            cumulative[ev["subject"]] += ev["epsilon"]
            ts, ys = series[ev["subject"]]
            ts.append(dt.datetime.fromisoformat(ev["time"]))
            ys.append(cumulative[ev["subject"]])
        top = sorted(series, key=lambda k: -cumulative[k])[:12]
        for subject in top:
            ts, ys = series[subject]
            ax.step(ts, ys, where="post", marker="o", markersize=3, label=subject)
        ax.set_xlabel("time of release (UTC)")
        ax.set_ylabel("epsilon spent (basic sum)")
        shown = f"{len(top)} of {len(series)} subjects (most spent)" if len(series) > 12 else ""
        ax.set_title("Epsilon over time" + (f": {shown}" if shown else ""))
        ax.set_ylim(bottom=0)
        fig.autofmt_xdate()
        if len(top) <= 12:
            ax.legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        plots["timeline"] = _png(fig)
        plt.close(fig)
    return plots


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("dpface", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
)


def render_html(report: dict[str, Any]) -> str:
    """The human report (self-contained HTML)."""
    return _ENV.get_template("report.html.j2").render(r=report, plots=_plots(report))


def write_report(
    ledger_path: str | Path, html_out: str | Path, json_out: str | Path | None = None
) -> dict[str, Any]:
    """Render the ledger at ``ledger_path`` to HTML (and JSON); files are written atomically."""
    path = Path(ledger_path)
    if not path.exists():
        raise FileNotFoundError(f"no ledger at {path}")
    with Ledger(path) as ledger:
        report = build_report(ledger)
    for target, text in ((html_out, render_html(report)), (json_out, json.dumps(report, indent=2))):
        if target is None:
            continue
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    return report
