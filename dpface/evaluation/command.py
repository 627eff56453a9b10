"""``dpface evaluate``: run the evaluation protocol and write tables and plots.

    dpface evaluate [FOLDER] --mechanisms original,baselines,dp-pix,generator,identity-laplace
                    --attackers dlib,faceres,mobileface,faceres-deep --epsilons 0.5,1,2,6,50,500
                    --draws 2 --seed 2024 -o results/ --workers 2

Without FOLDER the bundled sample faces (with identity labels) are used. The dpface rows run
the product itself (``AnonymizeConfig`` -> ``Anonymizer.anonymize`` on each whole photo; see
``dpface.evaluation.anonymisers``), charging a temporary ledger of the run's own.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_SEED = 2024
DEFAULT_MECHANISMS = "original,baselines,dp-pix,generator,identity-laplace"
DEFAULT_EPSILONS = "0.5,1,2,6,50,500"
DEFAULT_DPPIX = "0.5:16:16,2:16:16,8:16:16"


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _dppix(text: str) -> list[tuple[float, int, int]]:
    out = []
    for item in _list(text):
        try:
            e, b, m = item.split(":")
            out.append((float(e), int(b), int(m)))
        except ValueError as err:
            raise typer.BadParameter(
                f"{item!r}: use eps:block:m, e.g. 1:16:16", param_hint="--dppix"
            ) from err
    return out


def _finite(obj: object) -> object:
    """JSON-safe copy: nan -> null, ±inf -> "inf"/"-inf" strings."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to ``app``."""

    @app.command()
    def evaluate(
        folder: Annotated[
            Path | None,
            typer.Argument(
                help="Folder of photos (identities unknown). Default: the bundled sample faces.",
                exists=True,
                file_okay=False,
            ),
        ] = None,
        mechanisms: Annotated[
            str,
            typer.Option(
                help="Comma list: original, baselines (or single baseline names), dp-pix, "
                "generator (ε=∞), identity-laplace, identity-gaussian, identity-vmf."
            ),
        ] = DEFAULT_MECHANISMS,
        attackers: Annotated[
            str,
            typer.Option(
                help="Comma list of dlib, faceres, mobileface, faceres-deep (mobileface = "
                "white-box; faceres-deep: the deeper FaceRes, a stronger attacker)."
            ),
        ] = "dlib,faceres,mobileface,faceres-deep",
        epsilons: Annotated[
            str, typer.Option(help="ε grid for identity mechanisms.")
        ] = DEFAULT_EPSILONS,
        dppix: Annotated[
            str,
            typer.Option(
                help="DP-Pix grid as eps:block:m triples (block and m in photo pixels, as "
                "anonymize's --block and --pixels)."
            ),
        ] = DEFAULT_DPPIX,
        heads: Annotated[
            str,
            typer.Option(
                help="Head protection of the identity rows (anonymize's --head), comma list: "
                "keep, mask, dp-pix (head ε 1, the default) or dp-pix:EPS."
            ),
        ] = "keep",
        draws: Annotated[int, typer.Option(min=1, help="Releases measured per face.")] = 2,
        averaging: Annotated[
            str,
            typer.Option(
                help="Averaging attack: numbers of releases averaged (identity mechanisms); "
                "empty to skip."
            ),
        ] = "1,4,16",
        averaging_epsilons: Annotated[
            str, typer.Option(help="Run the averaging attack only at these ε (empty: every ε).")
        ] = "",
        parrot: Annotated[bool, typer.Option(help="Run the parrot attack.")] = True,
        seed: Annotated[
            int, typer.Option(min=0, help="Seed of every random stream (evaluation only; printed).")
        ] = DEFAULT_SEED,
        output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path(
            "results"
        ),
        workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
        limit: Annotated[
            int | None, typer.Option(min=1, help="Use only the first N faces (quick looks).")
        ] = None,
        exclude_own: Annotated[
            bool,
            typer.Option(
                help="Generator rows: never give a face a synthetic identity a person in its "
                "photo contributed to (the surrogate bank is built from the bundled samples; "
                "people you anonymise normally did not build it)."
            ),
        ] = False,
        save_images: Annotated[
            bool,
            typer.Option(
                help="Also write every measured release as a PNG (with its seed and the product's "
                "face records beside it) under OUTPUT/images."
            ),
        ] = False,
    ) -> None:
        """Measure privacy (attacks) and utility of anonymisers; write Table 5.1 and plots."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        from dpface.evaluation.aggregate import summarise
        from dpface.evaluation.anonymisers import build_conditions, parse_epsilons, parse_heads
        from dpface.evaluation.attacks import ATTACKERS
        from dpface.evaluation.faces import folder_faces, sample_faces
        from dpface.evaluation.report import write_plots, write_tables
        from dpface.evaluation.runner import RunConfig, protocol_budget, run_all

        console = Console()
        atts = tuple(_list(attackers))
        bad = [a for a in atts if a not in ATTACKERS]
        if bad or not atts:
            raise typer.BadParameter(
                f"unknown attacker(s) {bad}; use {', '.join(ATTACKERS)}", param_hint="--attackers"
            )
        try:
            eps = parse_epsilons(epsilons)
            conds = build_conditions(_list(mechanisms), eps, _dppix(dppix), parse_heads(heads))
            avg = tuple(sorted({int(v) for v in _list(averaging)}))
            avg_eps = tuple(parse_epsilons(averaging_epsilons))
        except ValueError as err:
            raise typer.BadParameter(str(err)) from err
        if any(n < 1 for n in avg):
            raise typer.BadParameter("averaging counts must be >= 1", param_hint="--averaging")
        if not conds:
            raise typer.BadParameter("no condition to evaluate", param_hint="--mechanisms")
        console.print(
            f"[bold]seed {seed}[/bold] (seeded randomness: evaluation only, never a "
            "release; rerun with --seed to reproduce)"
        )
        notes: list[str] = []
        if folder is None:
            faces = sample_faces()
            source = "bundled sample faces (identity labels known)"
        else:
            with console.status(f"detecting faces in {folder} ..."):
                faces, notes = folder_faces(folder)
            source = f"{folder} (identities unknown)"
            notes.insert(
                0,
                "identities are unknown: every face is its own identity, so "
                "rank-1 only asks whether a face is matched to its own original "
                "and TAR@FAR has no genuine pairs",
            )
        if limit is not None:
            faces = faces[:limit]
        if not faces:
            console.print("[red]no face to evaluate[/red]")
            for n in notes:
                console.print(f"  {n}")
            raise typer.Exit(1)
        cfg = RunConfig(
            seed=seed,
            draws=draws,
            attackers=atts,
            averaging=avg,
            parrot=parrot,
            averaging_epsilons=avg_eps,
            exclude_own=exclude_own,
            save_images=save_images,
        )
        console.print(
            f"{len(faces)} face(s) from {source}; {len(conds)} condition(s); "
            f"{draws} draw(s); attackers {', '.join(atts)}; {workers} worker(s)"
        )
        t0 = time.perf_counter()
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            "{task.completed}/{task.total}",
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as prog:
            bar = prog.add_task("faces × conditions", total=None)
            files, computed = run_all(
                conds,
                faces,
                cfg,
                output,
                workers,
                lambda d, t: prog.update(bar, completed=d, total=t),
            )
        elapsed = time.perf_counter() - t0
        summaries = [
            summarise(c, faces, {k: p for (n, k), p in files.items() if n == c.name}, cfg)
            for c in conds
        ]
        refusals = sum(
            round(s["metrics"].get("refused", [0.0])[0] * s["faces"] * s["draws"])
            for s in summaries
        )
        if refusals:
            console.print(
                f"[red]{refusals} release(s) of measured faces were refused by the "
                "ledger and masked[/red]"
            )
        header = "\n".join(
            [
                f"dpface evaluate — {dt.datetime.now(tz=dt.UTC):%Y-%m-%d %H:%M} UTC",
                f"faces: {len(faces)} from {source}",
                f"seed {seed}; {draws} draw(s) per face; mean ± 95% CI (Student t over faces)",
                "product: every dpface row is dpface's own Anonymizer (AnonymizeConfig defaults: "
                "detector, face regions, DP-Pix block/m in photo pixels, DP-Pix fallback, mask on "
                "refusal) run on the whole photo, one seed per release; attackers read the output "
                "at the face's true position",
                "baselines: applied to the regions the product protects in the same photo",
                f"ledger: a temporary ledger for the run (deleted afterwards), every face unit's "
                f"budget ε = {protocol_budget(conds, cfg)[0]:g}, enough for the protocol; budget "
                f"refusals: {refusals}",
                "surrogate bank: "
                + (
                    "the synthetic identities of the people in each photo "
                    "excluded (--exclude-own: people outside the bank)"
                    if exclude_own
                    else "all synthetic identities, including those the sample "
                    "people built (pessimistic for the sample faces)"
                ),
                f"attackers: {', '.join(atts)} (mobileface is the encoder inside dpface's "
                "mechanisms: white-box); PSR = share of outputs at or beyond the attacker's "
                "threshold (dlib L2 0.6; FaceRes/MobileFace/FaceRes-deep calibrated cosine)",
                *[f"note: {n}" for n in notes],
            ]
        )
        md = write_tables(summaries, output, atts, avg, header)
        plots = write_plots(summaries, output, atts, avg)
        (output / "summaries.json").write_text(
            json.dumps(
                _finite(
                    {
                        "seed": seed,
                        "draws": draws,
                        "attackers": list(atts),
                        "averaging": list(avg),
                        "faces": [f.key for f in faces],
                        "notes": notes,
                        "conditions": summaries,
                    }
                ),
                indent=1,
            )
        )
        print(md)
        console.print(
            f"{computed} task(s) computed, {len(files) - computed} reused from "
            f"{output / 'cache'} in {elapsed:.1f} s; wrote {output / 'table51.md'}, "
            f"{output / 'table51.html'}, {', '.join(str(p) for p in plots)}"
        )
