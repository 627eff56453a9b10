"""The ``dpface`` command line.

* ``dpface demo``: the README's main job -- anonymise the bundled sample photos under a budget;
* ``dpface anonymize``: de-identify your photos (files and folders), with receipts and a report;
* ``dpface report``: render a ledger as HTML (+ versioned JSON);
* ``dpface audit``: a black-box statistical audit of a mechanism on worst-case neighbours;
* ``dpface mechanisms-demo``: the DP core alone on synthetic embeddings, with a receipt.

Exit codes: 0 the run completed (per-image problems are listed, not fatal); 1 an audit refuted
a claim; 2 the command line or the whole run was unusable.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from mechanisms import accounting
from mechanisms.base import Mechanism
from mechanisms.exponential import Exponential
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace
from mechanisms.rng import Randomness
from mechanisms.subsampling import poisson_amplify

RECEIPT_SCHEMA = "dpface.receipt/0.1"

app = typer.Typer(
    help="dpface: de-identify faces with formal, tested differential-privacy guarantees.\n\n"
    "Each face's identity is privatised under an epsilon budget and a new face is drawn from it "
    "(or the face box is released with DP pixelization). Every release is charged to its person "
    "in a ledger before any noise is drawn; receipts say what is and is not protected.",
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

    receipt = {
        "schema": RECEIPT_SCHEMA,
        "subjects": people,
        "releases": [
            _receipt_entry("laplace", lap, people)
            | {"cosine_to_input": cosine(emb, lap_out), "seconds": timings["laplace"]},
            _receipt_entry("gaussian", gau, people)
            | {"cosine_to_input": cosine(emb, gau_out), "seconds": timings["gaussian"]},
            _receipt_entry("exponential", exp_mech, people)
            | {
                "picked_own_prototype": float(np.mean(chosen[:n_proto] == np.arange(n_proto))),
                "seconds": timings["exponential"],
            },
        ],
        "per_subject_spent": {
            "note": "each subject appears in one release of each mechanism (basic composition)",
            "total": str(
                accounting.compose_basic(
                    [lap.guarantee.budget, gau.guarantee.budget, exp_mech.guarantee.budget]
                )
            ),
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
    for entry in receipt["releases"]:  # type: ignore[attr-defined]
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
    total = receipt["per_subject_spent"]["total"]  # type: ignore[index]
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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MECHANISMS = ("identity-laplace", "identity-gaussian", "identity-vmf", "dp-pix", "dp-blur")


def _collect(inputs: list[Path]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(file, path relative to its input root) for every image; unreadable inputs listed."""
    found: list[tuple[Path, Path]] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file())
            for f in files:
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((f, f.relative_to(item)))
                elif not f.name.startswith("."):
                    problems.append(
                        (
                            str(f),
                            f"skipped: unsupported file type {f.suffix or '(no extension)'!r}; "
                            f"dpface reads {' '.join(sorted(IMAGE_SUFFIXES))}",
                        )
                    )
        elif item.is_file():
            found.append((item, Path(item.name)))
        else:
            problems.append((str(item), "no such file or folder"))
    return found, problems


def _build_mechanism(
    name: str, epsilon: float, delta: float, dim: int, block: int, m: int, seed: int | None
) -> Mechanism:
    from mechanisms.identity import IdentityGaussian, IdentityLaplace, IdentityVMF
    from mechanisms.pixelization import DPBlur, DPPixelization

    if name == "identity-laplace":
        return IdentityLaplace(epsilon=epsilon, dim=dim, seed=seed)
    if name == "identity-gaussian":
        return IdentityGaussian(epsilon=epsilon, delta=delta, dim=dim, seed=seed)
    if name == "identity-vmf":
        return IdentityVMF(epsilon=epsilon, dim=dim, seed=seed)
    if name == "dp-pix":
        return DPPixelization(epsilon=epsilon, block=block, m=m, seed=seed)
    if name == "dp-blur":
        return DPBlur(epsilon=epsilon, delta=delta, block=block, m=m, seed=seed)
    raise typer.BadParameter(f"unknown mechanism {name!r}; choose from {', '.join(MECHANISMS)}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temp name, flush to disk, then rename: a crash leaves either the old
    file or the complete new one under ``path``, never a half-written one."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")  # no EXIF or other metadata is written
    return buf.getvalue()


def _reason(exc: Exception) -> str:
    """An exception's message without the quotes ``str(KeyError)`` adds."""
    return str(exc.args[0]) if exc.args else str(exc)


def _identity_generator(encoder: str, encoder_model: Path | None, swap_model: Path | None,
                        swap_latent_map: str | None) -> tuple[Any, Any]:
    """(generator, its encoder) for the identity mechanisms; bad combinations become usage
    errors (exit 2) with the reason."""
    from .models.encoders import get_encoder

    if encoder == "arcface-onnx" and encoder_model is None:
        raise typer.BadParameter("--encoder arcface-onnx needs --encoder-model PATH",
                                 param_hint="--encoder-model")
    if encoder_model is not None and encoder != "arcface-onnx":
        raise typer.BadParameter("--encoder-model is only for --encoder arcface-onnx",
                                 param_hint="--encoder-model")
    try:
        enc = (get_encoder(encoder, model_path=encoder_model) if encoder_model is not None
               else get_encoder(encoder))
    except (KeyError, FileNotFoundError) as exc:
        raise typer.BadParameter(_reason(exc), param_hint="--encoder") from exc
    if swap_model is None:
        if swap_latent_map is not None:
            raise typer.BadParameter("--swap-latent-map needs --swap-model",
                                     param_hint="--swap-latent-map")
        from .generators.surrogate import SurrogateGenerator

        try:
            return SurrogateGenerator(encoder=encoder), enc
        except (KeyError, ValueError) as exc:
            raise typer.BadParameter(
                f"the offline generator cannot use {encoder!r}: {_reason(exc)}",
                param_hint="--encoder") from exc
    from .generators.onnx_swap import OnnxFaceSwapGenerator

    latent: Any = None
    if swap_latent_map == "graph":
        latent = "graph"
    elif swap_latent_map is not None:
        try:
            latent = np.load(swap_latent_map)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot read {swap_latent_map}: {exc}",
                                     param_hint="--swap-latent-map") from exc
    try:
        gen = OnnxFaceSwapGenerator(swap_model, encoder=encoder, latent_map=latent)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--swap-model") from exc
    if gen.identity_dim != enc.dim:
        raise typer.BadParameter(
            f"the swap model reads {gen.identity_dim}-d identities but {encoder} gives "
            f"{enc.dim}-d embeddings; pass --swap-latent-map (a {enc.dim}×{gen.latent_dim} "
            "matrix) or an encoder of that size", param_hint="--swap-latent-map")
    return gen, enc


@app.command()
def anonymize(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (recursive).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("out/anon"),
    mechanism: Annotated[
        str, typer.Option("--mechanism", "-m", help=f"One of: {', '.join(MECHANISMS)}.")
    ] = "identity-laplace",
    epsilon: Annotated[float, typer.Option(help="epsilon per release (> 0).")] = 6.0,
    delta: Annotated[float, typer.Option(help="delta for Gaussian-type mechanisms.")] = 1e-6,
    budget: Annotated[
        float | None,
        typer.Option(help="Total epsilon per subject (default: 5 releases' worth)."),
    ] = None,
    ledger_path: Annotated[
        Path | None, typer.Option("--ledger", help="Ledger database (default: OUT/ledger.db).")
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(help="Name of the one person shown in every input photo (links budgets)."),
    ] = None,
    pseudonym: Annotated[
        str, typer.Option(help="'fresh': new noise per photo; 'reuse': one per named subject.")
    ] = "fresh",
    encoder: Annotated[str, typer.Option(help="Identity encoder inside the generator.")] = (
        "mobileface"
    ),
    block: Annotated[int, typer.Option(help="Cell size for dp-pix / dp-blur.")] = 16,
    pixels: Annotated[int, typer.Option("--pixels", help="m: pixels protected (dp-pix).")] = 16,
    detector: Annotated[str, typer.Option(help="'hog' or 'blazeface'.")] = "hog",
    seed: Annotated[
        int | None, typer.Option(help="Reproducible noise for experiments (NOT private).")
    ] = None,
    composition: Annotated[
        str,
        typer.Option(
            help="How the ledger adds up a subject's releases: 'basic' (sum) or 'pld' (tight "
            "privacy-loss-distribution accounting; never more than the sum)."
        ),
    ] = "basic",
    link: Annotated[
        bool,
        typer.Option(
            help="Link unnamed faces to subjects named in earlier runs by face matching (keeps "
            "raw face templates in the ledger: trusted side only)."
        ),
    ] = False,
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
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """De-identify faces in photos under a per-subject epsilon budget.

    Every face is charged to its subject in the ledger before any noise is drawn; a face whose
    budget is spent (or that cannot be replaced) is masked, never left as it was. Writes one PNG
    (no metadata) and one JSON receipt per input, and OUT/report.html. Exit code 0 when the run
    completed (per-image problems are listed in the summary), 2 for a bad command line.
    """
    from mechanisms.budgets import ApproxDP, PureDP

    from .ledger import Ledger
    from .pipeline import Anonymizer
    from .report import write_report

    console = Console(stderr=True)
    if mechanism not in MECHANISMS:
        raise typer.BadParameter(
            f"unknown mechanism {mechanism!r}; choose from {', '.join(MECHANISMS)}",
            param_hint="--mechanism",
        )
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise typer.BadParameter("epsilon must be a finite number > 0", param_hint="--epsilon")
    if not 0 < delta < 1:
        raise typer.BadParameter("delta must lie in (0, 1)", param_hint="--delta")
    total = 5 * epsilon if budget is None else budget
    if not (math.isfinite(total) and total > 0):
        raise typer.BadParameter("budget must be a finite number > 0", param_hint="--budget")
    if pseudonym not in ("fresh", "reuse"):
        raise typer.BadParameter("pseudonym must be 'fresh' or 'reuse'", param_hint="--pseudonym")
    if composition not in ("basic", "pld"):
        raise typer.BadParameter("composition must be 'basic' or 'pld'", param_hint="--composition")
    files, problems = _collect(inputs)
    if not files:
        console.print("[red]error:[/] no image files found in the inputs")
        for where, why in problems:
            console.print(f"  {where}: {why}")
        raise typer.Exit(2)

    generator: Any = None
    encoder_obj: Any = None
    dim = 0
    if swap_model is not None and not mechanism.startswith("identity"):
        raise typer.BadParameter("a swap model needs an identity mechanism (identity-*)",
                                 param_hint="--swap-model")
    if mechanism.startswith("identity"):
        generator, encoder_obj = _identity_generator(encoder, encoder_model, swap_model,
                                                     swap_latent_map)
        dim = generator.identity_dim
    mech = _build_mechanism(mechanism, epsilon, delta, dim, block, pixels, seed)
    uses_delta = mechanism in ("identity-gaussian", "dp-blur")
    # delta budget: as many releases' deltas as the epsilon budget holds releases (basic sum)
    releases = max(1, math.floor(total / epsilon + 1e-9))
    default_budget = ApproxDP(total, min(releases * delta, 0.5)) if uses_delta else PureDP(total)
    ledger = Ledger(
        ledger_path or out / "ledger.db",
        default_budget=default_budget,
        composition=composition,  # type: ignore[arg-type]
    )
    anon = Anonymizer(
        mechanism=mech,
        generator=generator,
        ledger=ledger,
        detector=detector,
        pseudonym=pseudonym,  # type: ignore[arg-type]
        link="match" if link else "none",
        encoder=encoder_obj,
    )
    stages: dict[str, float] = {}
    counts: dict[str, int] = {
        "images": 0,
        "faces": 0,
        "replaced": 0,
        "pixelized": 0,
        "masked": 0,
        "no_face": 0,
    }
    from rich.progress import Progress

    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("anonymising", total=len(files))
        for path, rel in files:
            progress.update(task, description=f"anonymising {rel}")
            try:
                res = anon.anonymize(path, subject=subject)
            except Exception as err:  # a bug must not lose the rest of the batch
                problems.append((str(path), f"{type(err).__name__}: {err}"))
                progress.advance(task)
                continue
            for stage, sec in res.timings.items():
                stages[stage] = stages.get(stage, 0.0) + sec
            target = (out / rel).with_suffix(".png")
            if res.ok and res.image is not None:
                _write_atomic(target, _png_bytes(res.image))
                counts["images"] += 1
                if not res.faces:
                    counts["no_face"] += 1
                    problems.append(
                        (
                            str(path),
                            "no face found: "
                            + str(res.receipt.get("detection_note") or "written unchanged"),
                        )
                    )
                for f in res.faces:
                    counts["faces"] += 1
                    counts[f.status] += 1
            else:
                problems.append((str(path), res.error or "failed"))
            res.receipt["output"] = str(target) if res.ok else None
            _write_atomic(
                target.with_suffix(".receipt.json"), json.dumps(res.receipt, indent=2).encode()
            )
            progress.advance(task)
    elapsed = time.perf_counter() - start
    report_path = out / "report.html"
    ledger.close()
    write_report(ledger_path or out / "ledger.db", report_path, out / "report.json")
    summary = {
        "inputs": len(files),
        "seconds": round(elapsed, 2),
        **counts,
        "problems": [{"input": w, "reason": r} for w, r in problems],
        "output": str(out),
        "report": str(report_path),
        "mechanism": mech.guarantee.statement(),
        "seeded": seed is not None,
        "images_per_second": round(len(files) / elapsed, 3) if elapsed > 0 else None,
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
    }
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(
        f"[bold]{counts['images']}[/] of {len(files)} image(s) written to {out} in "
        f"{elapsed:.1f}s: {counts['faces']} face(s) — {counts['replaced']} replaced, "
        f"{counts['pixelized']} pixelized, {counts['masked']} masked"
    )
    if stages:
        split = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
        console.print(f"time by stage: {split}")
    for where, why in problems:
        console.print(f"  [yellow]![/] {where}: {why}")
    if seed is not None:
        console.print("[yellow]Randomness was SEEDED: reproducible and not private.[/]")
    console.print(f"Receipts beside each image; report: {report_path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("out/samples"),
    epsilon: Annotated[float, typer.Option(help="epsilon per release (> 0).")] = 6.0,
    mechanism: Annotated[
        str, typer.Option("--mechanism", "-m", help=f"One of: {', '.join(MECHANISMS)}.")
    ] = "identity-laplace",
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """The main job: anonymise the bundled sample photos (images, receipts, report in OUT).

    Each face is its own privacy unit with a budget of 5 releases; the ledger is OUT/ledger.db,
    so running the demo again spends more of the same budgets until they are refused.
    """
    from .models.store import assets_dir

    samples = assets_dir() / "samples"
    if not samples.is_dir():
        typer.echo(f"error: no sample photos at {samples}; run ./dev setup first", err=True)
        raise typer.Exit(2)
    anonymize(
        [samples], out=out, mechanism=mechanism, epsilon=epsilon, delta=1e-6, budget=None,
        ledger_path=None, subject=None, pseudonym="fresh", encoder="mobileface", block=16,
        pixels=16, detector="hog", seed=None, composition="basic", link=False,
        json_output=json_output,
    )


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
    seed: Annotated[int, typer.Option(help="Noise seed (the sheet is for looking, not release).")]
    = 7,
) -> None:
    """Look at the generator: sample faces (rows) and their replacements at several epsilons.

    Each row is a bundled sample face, then the offline generator's output for its IdentityLaplace-
    privatised identity at each epsilon, as 256-px face crops. Seeded: reproducible, not private.
    """
    import cv2

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
    _write_atomic(out, cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))[1].tobytes())
    typer.echo(f"wrote {out} ({sheet.shape[1]}×{sheet.shape[0]}: {len(idx)} faces × "
               f"{len(eps)} epsilons)")


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


@app.command()
def report(
    ledger: Annotated[Path, typer.Argument(help="The ledger database (SQLite) to report on.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="HTML report to write.")] = Path(
        "out/report.html"
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the machine-readable report here.")
    ] = None,
) -> None:
    """Render a ledger to a human HTML report (and optionally versioned JSON)."""
    from .report import write_report

    try:
        rep = write_report(ledger, out, json_out)
    except FileNotFoundError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(
        f"{rep['totals']['subjects']} subject(s), {rep['totals']['releases']} release(s): "
        f"wrote {out}" + (f" and {json_out}" if json_out else "")
    )


@app.command()
def version() -> None:
    """Print the installed dpface version."""
    from importlib.metadata import version as _version

    typer.echo(_version("dpface"))


from dpface.evaluation.command import register as _register_evaluate  # noqa: E402

_register_evaluate(app)

if __name__ == "__main__":
    app()
