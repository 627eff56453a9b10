"""``AnonymizeConfig``: everything a de-identification run needs, validated before any work.

The command line and Python users share this one object, so they get the same defaults and
the same budget policy::

    from dpface.config import AnonymizeConfig

    config = AnonymizeConfig(mechanism="dp-pix", epsilon=2.0)   # raises UsageError if unusable
    summary = config.run(["photos/"], "out/anon")                # plan, anonymise, report

Every field is keyword-only and checked in ``__post_init__``; a bad value raises
:class:`dpface.errors.UsageError` saying which setting and why, *before* anything is read,
charged or written. The mechanism is built once at that point too, so a mechanism's own
refusal (an epsilon its exact sampler cannot serve, a block it cannot use) is a usage error
rather than a failure after a budget was charged.

Budget policy: a subject seen for the first time gets ``budget`` epsilon (default: five
releases' worth, ``5 * epsilon``); mechanisms with a delta get as many releases' deltas
(at most 0.5). An existing subject keeps the budget it has (change it explicitly with
``dpface ledger set-budget``). The default ledger is :func:`dpface.ledger.default_ledger_path`,
per user, so budgets outlive output folders.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from mechanisms import registry as mechanism_registry

from .errors import UsageError
from .head import HEAD_EPSILON, HEAD_MODES, HeadMode

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from mechanisms.base import Mechanism
    from mechanisms.budgets import Budget

    from .batch import BatchSummary, Progress, SubjectMap
    from .ledger import Ledger
    from .pipeline import Anonymizer

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "DEFAULT_RELEASES",
    "DETECTORS",
    "ENCODERS",
    "ENGINES",
    "MAX_BLOCK",
    "MECHANISMS",
    "AnonymizeConfig",
    "CompositionName",
    "DetectorName",
    "EngineName",
    "MechanismName",
    "NamesPolicy",
    "PseudonymPolicy",
]

MechanismName = str  # a face mechanism of mechanisms.registry (validated against MECHANISMS)
DetectorName = Literal["full", "centerface", "hog", "blazeface"]
CompositionName = Literal["basic", "pld"]
PseudonymPolicy = Literal["fresh", "reuse"]
NamesPolicy = Literal["keep", "hash"]
EngineName = Literal["local", "dask", "ray"]
ENGINES: tuple[str, ...] = get_args(EngineName)
# the module each engine needs, and the pip extra that installs it
ENGINE_EXTRAS = {
    "dask": ("distributed", "pip install 'dpface[distributed]'"),
    "ray": ("ray", "pip install ray"),
}

MECHANISMS: tuple[str, ...] = mechanism_registry.names(face=True)
DETECTORS: tuple[str, ...] = get_args(DetectorName)
ENCODERS = ("mobileface", "faceres", "dlib", "arcface-onnx")
IDENTITY_MECHANISMS: tuple[str, ...] = mechanism_registry.names(consumes="embedding")
DEFAULT_RELEASES = 5  # the default budget holds this many releases at the chosen epsilon
MAX_BLOCK = 256
DEFAULT_MAX_MEGAPIXELS = 100.0
MAX_WORKERS = 256
_MAX_DELTA_BUDGET = 0.5
# the probe draw that checks a mechanism can serve its parameters (public dummy data)
_PROBE_SIDE = 512


def _default_ledger() -> Path:
    from .ledger import default_ledger_path

    return Path(default_ledger_path())


def _reason(exc: BaseException) -> str:
    """An exception's message without the quotes ``str(KeyError)`` adds."""
    if len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _number(name: str, option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{name} ({option}) must be a number, got {value!r}")
    return float(value)


def _integer(name: str, option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} ({option}) must be a whole number, got {value!r}")
    return value


def _choice(name: str, option: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"{name} ({option}) must be one of {', '.join(choices)}; got {value!r}")


def _option_for(message: str) -> str:
    """Which command-line option a mechanism's own error message is about."""
    low = message.lower()
    found = [
        (low.find(word), option)
        for word, option in (
            ("delta", "--delta"),
            ("block", "--block"),
            ("epsilon", "--epsilon"),
            ("kappa", "--epsilon"),
            ("m must", "--pixels"),
            ("dim", "--encoder"),
        )
        if word in low
    ]
    return min(found)[1] if found else "--epsilon"


@dataclass(frozen=True, kw_only=True)
class AnonymizeConfig:
    """The settings of a de-identification run (defaults = the command line's defaults).

    ``mechanism``: identity-laplace | identity-gaussian | identity-vmf (a new face drawn from
    the privatised identity embedding) or dp-pix | dp-blur (DP cell means of the face region).
    ``epsilon``/``delta``: the cost of one release. ``budget``: total epsilon of a subject seen
    for the first time (default ``5 * epsilon``). ``composition``: how the ledger adds up a
    subject's releases. ``pseudonym``: "fresh" (new noise per photo) or "reuse" (one privatised
    identity per named subject). ``head``: "keep" (default) leaves the head around a generated
    face as in the photo; "dp-pix" also releases each face's head box (hair, ears, outline)
    with DP-Pix at ``head_epsilon`` (default 1), charged to the face's unit, so a
    photo costs ``epsilon + head_epsilon``; "mask" paints it grey (:mod:`dpface.head`;
    identity mechanisms; photos and videos). ``encoder``/``encoder_model``/``swap_model``/
    ``swap_latent_map``: the identity encoder and generator. ``block``/``pixels``: DP-Pix cell
    size and m. ``detector``: "full" (default: CenterFace at full resolution, turned copies
    searched when the photo looks turned), "centerface", "hog" or "blazeface". ``seed``:
    reproducible noise for experiments (NOT private). ``ledger``: the ledger database
    (default: the per-user ledger).
    ``templates``: opt-in face linking against this template store (raw face templates:
    trusted side). ``names``: "keep" mirrors input names under the output folder, "hash"
    names outputs and receipts by keyed digests. ``max_megapixels``: larger images are
    refused from their header, before decoding. ``strict``: withhold photos in which no face
    was found instead of writing them unchanged. ``purpose``: recorded with the run.
    ``workers``: processes that anonymise the photos in parallel, this one included, each
    with one compute thread, all on the same ledger (None: the usable cores, as many as the
    available memory holds, at most one per photo; 1 with ``seed`` or an in-memory ledger; 1:
    everything in this process). ``audio``: a video's audio is copied ("keep") or dropped
    ("drop"); ``detect_every``: the detector searches every k-th frame of a video
    (:mod:`dpface.video`).
    ``engine``: "local" (default: this machine's processes, nothing to start), "dask" or
    "ray" (:mod:`dpface.distributed`: a local cluster of ``workers`` processes, or the
    cluster at ``address``; needs ``pip install 'dpface[distributed]'`` / ``pip install ray``).
    ``resume``: continue the job recorded in the output folder (:mod:`dpface.manifest`):
    finished inputs are skipped, and nothing is charged twice for the same output.
    ``receipts_table``: also write ``OUT/receipts.parquet`` (one row per receipt);
    ``image_column``: the image column of Parquet inputs (default: the first binary one);
    see :mod:`dpface.sources` for URLs, tar shards and Parquet tables.
    """

    mechanism: MechanismName = "identity-laplace"
    epsilon: float = 6.0
    delta: float = 1e-6
    budget: float | None = None
    composition: CompositionName = "basic"
    pseudonym: PseudonymPolicy = "fresh"
    head: HeadMode = "keep"
    head_epsilon: float | None = None
    encoder: str = "mobileface"
    encoder_model: Path | None = None
    swap_model: Path | None = None
    swap_latent_map: str | None = None
    block: int = 16
    pixels: int = 16
    detector: DetectorName = "full"
    seed: int | None = None
    ledger: Path = field(default_factory=_default_ledger)
    templates: Path | None = None
    names: NamesPolicy = "keep"
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    strict: bool = False
    purpose: str | None = None
    workers: int | None = None
    audio: str = "keep"
    detect_every: int = 1
    engine: EngineName = "local"
    address: str | None = None
    resume: bool = False
    receipts_table: bool = False
    image_column: str | None = None

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        _choice("mechanism", "--mechanism", self.mechanism, MECHANISMS)
        eps = _number("epsilon", "--epsilon", self.epsilon)
        if not (math.isfinite(eps) and eps > 0):
            raise UsageError(f"epsilon (--epsilon) must be a finite number > 0, got {eps!r}")
        delta = _number("delta", "--delta", self.delta)
        if not 0 < delta < 1:
            raise UsageError(f"delta (--delta) must lie strictly between 0 and 1, got {delta!r}")
        self._check_head()
        if self.budget is not None:
            total = _number("budget", "--budget", self.budget)
            if not (math.isfinite(total) and total > 0):
                raise UsageError(f"budget (--budget) must be a finite number > 0, got {total!r}")
            if total < self.photo_epsilon * (1 - 1e-12):
                raise UsageError(
                    f"budget (--budget) {total:g} is less than one photo's releases "
                    f"({self._photo_cost()}): every face of a new subject would be masked; "
                    "raise --budget or lower --epsilon"
                )
        _choice("composition", "--composition", self.composition, ("basic", "pld"))
        _choice("pseudonym", "--pseudonym", self.pseudonym, ("fresh", "reuse"))
        _choice("detector", "--detector", self.detector, DETECTORS)
        _choice("names", "--names", self.names, ("keep", "hash"))
        block = _integer("block", "--block", self.block)
        if not 1 <= block <= MAX_BLOCK:
            raise UsageError(
                f"block (--block) must be between 1 and {MAX_BLOCK} pixels, got {block}: a cell "
                "larger than a face gives no more privacy (the whole face is already one cell) "
                "and the padded grid would take memory in proportion to the cell area"
            )
        pixels = _integer("pixels", "--pixels", self.pixels)
        if pixels < 1:
            raise UsageError(f"pixels (--pixels, m) must be at least 1, got {pixels}")
        if self.seed is not None:
            seed = _integer("seed", "--seed", self.seed)
            if seed < 0:
                raise UsageError(f"seed (--seed) must be a whole number >= 0, got {seed}")
        mp = _number("max_megapixels", "--max-megapixels", self.max_megapixels)
        if math.isnan(mp) or mp <= 0:
            raise UsageError(f"max_megapixels (--max-megapixels) must be > 0, got {mp!r}")
        if not isinstance(self.strict, bool):
            raise UsageError(f"strict must be True or False, got {self.strict!r}")
        if self.purpose is not None and not isinstance(self.purpose, str):
            raise UsageError(f"purpose (--purpose) must be text, got {self.purpose!r}")
        self._check_paths()
        _choice("audio", "--audio", self.audio, ("keep", "drop"))
        every = _integer("detect_every", "--detect-every", self.detect_every)
        if not 1 <= every <= 300:
            raise UsageError(f"detect_every (--detect-every) must be 1 to 300, got {every}")
        self._check_workers()
        self._check_engine()
        self._check_encoder()
        # the mechanism's own checks, and one probe draw on public dummy data: a setting the
        # exact sampler cannot serve is refused here, never after a budget was charged
        self._checked_mechanism(self._provisional_dim(), probe=True)

    def _check_head(self) -> None:
        _choice("head", "--head", self.head, HEAD_MODES)
        if self.head_epsilon is not None:
            h = _number("head_epsilon", "--head-epsilon", self.head_epsilon)
            if not (math.isfinite(h) and h > 0):
                raise UsageError(
                    f"head_epsilon (--head-epsilon) must be a finite number > 0, got {h!r}"
                )
            if self.head != "dp-pix":
                raise UsageError(
                    "head_epsilon (--head-epsilon) is the cost of releasing the head with "
                    "--head dp-pix; give --head dp-pix with it"
                )
        if self.head != "keep" and not self.is_identity:
            raise UsageError(
                f"--head {self.head} protects the head around a generated face: use it with an "
                f"identity mechanism ({', '.join(IDENTITY_MECHANISMS)}); --mechanism "
                f"{self.mechanism} releases the face region itself"
            )

    @property
    def head_eps(self) -> float:
        """ε of one head release (``head="dp-pix"``): ``head_epsilon`` or ``HEAD_EPSILON``."""
        return float(HEAD_EPSILON if self.head_epsilon is None else self.head_epsilon)

    @property
    def photo_epsilon(self) -> float:
        """ε one face of one photo costs: the release, plus the head release with
        ``head="dp-pix"``."""
        return float(self.epsilon) + (self.head_eps if self.head == "dp-pix" else 0.0)

    def _photo_cost(self) -> str:
        if self.head != "dp-pix":
            return f"--epsilon {self.epsilon:g}"
        return f"--epsilon {self.epsilon:g} + --head-epsilon {self.head_eps:g}"

    def _check_workers(self) -> None:
        if self.workers is None:
            return
        n = _integer("workers", "--workers", self.workers)
        if not 1 <= n <= MAX_WORKERS:
            raise UsageError(f"workers (--workers) must be between 1 and {MAX_WORKERS}, got {n}")
        if n > 1 and self.seed is not None:
            raise UsageError(
                "--seed makes the noise reproducible only in one process: use --workers 1 "
                "(workers=1) with --seed"
            )
        if n > 1 and ":memory:" in (str(self.ledger), str(self.templates)):
            raise UsageError(
                "workers (--workers) > 1 needs a ledger (and template store) on disk: an "
                "in-memory one cannot be shared, so budgets would not bind across processes"
            )

    def _check_engine(self) -> None:
        _choice("engine", "--engine", self.engine, ENGINES)
        if not isinstance(self.receipts_table, bool):
            raise UsageError(
                f"receipts_table (--receipts-table) must be True or False, got "
                f"{self.receipts_table!r}"
            )
        if self.image_column is not None and (
            not isinstance(self.image_column, str) or not self.image_column
        ):
            raise UsageError(
                f"image_column (--image-column) must be a column name, got {self.image_column!r}"
            )
        if not isinstance(self.resume, bool):
            raise UsageError(f"resume (--resume) must be True or False, got {self.resume!r}")
        if self.address is not None:
            if self.engine == "local":
                raise UsageError(
                    "address (--address) is the scheduler of a dask or ray cluster: give "
                    "--engine dask or --engine ray with it"
                )
            if not isinstance(self.address, str) or not self.address.strip():
                raise UsageError(f"address (--address) must be text, got {self.address!r}")
        if self.engine == "local":
            return
        import importlib.util

        module, install = ENGINE_EXTRAS[self.engine]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(
                f"--engine {self.engine} needs {self.engine}, which is not installed: "
                f"{install} (or run with --engine local)"
            )
        if self.seed is not None:
            raise UsageError(
                "--seed makes the noise reproducible only in one process: use --engine local "
                "--workers 1 with --seed"
            )
        if ":memory:" in (str(self.ledger), str(self.templates)):
            raise UsageError(
                f"--engine {self.engine} needs a ledger (and template store) every worker "
                "reaches (a postgresql:// URL, or a file on a shared disk), not :memory:"
            )

    def worker_count(self) -> int:
        """How many processes :meth:`run` uses (before the cap of one per photo)."""
        if self.workers is not None:
            return self.workers
        if self.seed is not None or ":memory:" in (str(self.ledger), str(self.templates)):
            return 1
        from .batch import default_workers

        return default_workers()

    def _worker_setup(self) -> Callable[[str], Anonymizer]:
        """In a worker process (:class:`dpface.batch.WorkerPool`): load the models now; the
        ledger is opened only when the run starts, under the caller's run id."""
        generator, encoder = self.build_generator()
        mech = self.build_mechanism(None if generator is None else generator.identity_dim)

        def anonymizer(run_id: str) -> Anonymizer:
            ledger = self.open_ledger()
            ledger.run_id = run_id
            try:
                return self._assemble(mech, generator, encoder, ledger)
            except BaseException:
                ledger.close()
                raise

        return anonymizer

    def _check_paths(self) -> None:
        for name, option in (("ledger", "--ledger"), ("templates", "--link")):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (str, os.PathLike)):
                raise UsageError(f"{name} ({option}) must be a path, got {value!r}")
            if name == "ledger":
                from .ledger_backends import postgres_url

                url = postgres_url(value)  # a ledger on a PostgreSQL server: kept as its URL
                if url is not None:
                    object.__setattr__(self, name, url)
                    continue
            path = Path(value)
            object.__setattr__(self, name, path)
            if str(path) != ":memory:" and path.is_dir():
                raise UsageError(f"{name} ({option}) {path} is a folder; give a database file")
        if self.ledger is not None and self.templates is not None and isinstance(self.ledger, Path):
            if Path(self.ledger).resolve() == Path(self.templates).resolve():
                raise UsageError(
                    "the template store (--link) must be a different file from the ledger "
                    "(--ledger): it holds raw face templates and is kept apart from the ledger"
                )
        for name in ("encoder_model", "swap_model"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    def _check_encoder(self) -> None:
        if self.encoder not in ENCODERS:
            raise UsageError(
                f"unknown encoder {self.encoder!r} (--encoder); choose from {', '.join(ENCODERS)}"
            )
        if self.encoder == "arcface-onnx" and self.encoder_model is None:
            raise UsageError("--encoder arcface-onnx needs --encoder-model PATH (encoder_model=)")
        if self.encoder_model is not None:
            if self.encoder != "arcface-onnx":
                raise UsageError(
                    "--encoder-model (encoder_model=) is only for --encoder arcface-onnx"
                )
            if not self.encoder_model.is_file():
                raise UsageError(
                    f"--encoder-model: ArcFace ONNX model not found at {self.encoder_model}: "
                    "pass the path of a local .onnx file; dpface never downloads weights"
                )
        identity = self.mechanism in IDENTITY_MECHANISMS
        if self.swap_model is not None:
            if not identity:
                raise UsageError(
                    "--swap-model (swap_model=) needs an identity mechanism (identity-*)"
                )
            if not self.swap_model.is_file():
                raise UsageError(
                    f"--swap-model: face-swap ONNX model not found at {self.swap_model}: pass "
                    "the path of a local .onnx file; dpface never downloads weights"
                )
        elif self.swap_latent_map is not None:
            raise UsageError("--swap-latent-map (swap_latent_map=) needs --swap-model")
        if (
            self.swap_latent_map not in (None, "graph")
            and not Path(str(self.swap_latent_map)).is_file()
        ):
            raise UsageError(f"--swap-latent-map: no such file {self.swap_latent_map}")
        if identity and self.swap_model is None and self.encoder == "dlib":
            raise UsageError(
                "--encoder dlib: dlib is the evaluation attacker and must not drive the "
                "offline generator; use mobileface or faceres"
            )

    def _provisional_dim(self) -> int:
        """The identity dimension to check the mechanism with before any model is loaded."""
        return {"mobileface": 256, "faceres": 1024, "dlib": 128}.get(self.encoder, 512)

    # ------------------------------------------------------------------ budget policy
    @property
    def is_identity(self) -> bool:
        """True for the identity mechanisms (a generator draws the new face)."""
        return self.mechanism in IDENTITY_MECHANISMS

    @property
    def uses_delta(self) -> bool:
        return mechanism_registry.get(self.mechanism).uses_delta()

    @property
    def total_epsilon(self) -> float:
        """A new subject's epsilon budget: ``budget`` or ``DEFAULT_RELEASES`` photos'
        releases (``DEFAULT_RELEASES * photo_epsilon``)."""
        return DEFAULT_RELEASES * self.photo_epsilon if self.budget is None else float(self.budget)

    def default_budget(self) -> Budget:
        """The budget a subject gets the first time it is charged."""
        from mechanisms.budgets import ApproxDP, PureDP

        total = self.total_epsilon
        if not self.uses_delta:
            return PureDP(total)
        # delta: as many releases' deltas as the epsilon budget holds releases (basic sum)
        releases = max(1, math.floor(total / self.epsilon + 1e-9))
        return ApproxDP(total, min(releases * self.delta, _MAX_DELTA_BUDGET))

    # ------------------------------------------------------------------ builders
    def _mechanism(self, dim: int, seed: int | None) -> Mechanism:
        options = mechanism_registry.MechanismOptions(
            epsilon=self.epsilon,
            delta=self.delta,
            dim=dim,
            block=self.block,
            m=self.pixels,
            seed=seed,
        )
        return mechanism_registry.get(self.mechanism).build(options)

    def _probe(self, dim: int) -> None:
        """One draw of an unseeded twin of the mechanism on public dummy data (nothing about
        any person): errors the sampler would raise only when drawing surface here."""
        import numpy as np

        mech: Any = self._mechanism(dim, None)
        if self.is_identity:
            x = np.zeros(dim)
            x[0] = 1.0
            mech(x)
        else:
            img = np.full((_PROBE_SIDE, _PROBE_SIDE, 3), 128, dtype=np.uint8)
            mech(img, (0, 0, _PROBE_SIDE, _PROBE_SIDE))

    def _checked_mechanism(self, dim: int, *, probe: bool = False) -> Mechanism:
        try:
            mech = self._mechanism(dim, self.seed)
            if probe:
                self._probe(dim)
        except UsageError:
            raise
        except (ValueError, TypeError, ArithmeticError) as err:
            msg = _reason(err)
            if isinstance(err, OverflowError):
                msg = f"the sampler overflows at this setting ({err})"
            raise UsageError(
                f"{_option_for(msg)}: {self.mechanism} cannot be used with epsilon="
                f"{self.epsilon:g}"
                + (f", delta={self.delta:g}" if self.uses_delta else "")
                + ("" if self.is_identity else f", block={self.block}, pixels={self.pixels}")
                + f": {msg}"
            ) from err
        return mech

    def build_mechanism(self, dim: int | None = None) -> Mechanism:
        """The mechanism; identity mechanisms need the generator's ``identity_dim``."""
        if self.is_identity and dim is None:
            raise UsageError(
                f"{self.mechanism} needs the identity dimension (dim=) of its "
                "generator; use build_generator() first or build_anonymizer()"
            )
        return self._checked_mechanism(dim if dim is not None else 0, probe=True)

    def build_generator(self) -> tuple[Any, Any]:
        """(generator, its encoder) for the identity mechanisms; (None, None) for dp-pix/-blur.

        Model files that cannot be used are usage errors with the reason."""
        if not self.is_identity:
            return None, None
        from .models.encoders import get_encoder

        try:
            enc = (
                get_encoder(self.encoder, model_path=self.encoder_model)
                if self.encoder_model is not None
                else get_encoder(self.encoder)
            )
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise UsageError(f"--encoder: {_reason(exc)}") from exc
        if self.swap_model is None:
            from .generators.surrogate import SurrogateGenerator

            try:
                return SurrogateGenerator(encoder=self.encoder), enc
            except (KeyError, ValueError) as exc:
                raise UsageError(
                    f"--encoder: the offline generator cannot use {self.encoder!r}: {_reason(exc)}"
                ) from exc
        import numpy as np

        from .generators.onnx_swap import OnnxFaceSwapGenerator

        latent: Any = None
        if self.swap_latent_map == "graph":
            latent = "graph"
        elif self.swap_latent_map is not None:
            try:
                latent = np.load(self.swap_latent_map)
            except (OSError, ValueError) as exc:
                raise UsageError(
                    f"--swap-latent-map: cannot read {self.swap_latent_map}: {exc}"
                ) from exc
        try:
            gen = OnnxFaceSwapGenerator(self.swap_model, encoder=self.encoder, latent_map=latent)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(f"--swap-model: {_reason(exc)}") from exc
        if gen.identity_dim != enc.dim:
            raise UsageError(
                f"--swap-latent-map: the swap model reads {gen.identity_dim}-d identities but "
                f"{self.encoder} gives {enc.dim}-d embeddings; pass --swap-latent-map (a "
                f"{enc.dim}×{gen.latent_dim} matrix) or an encoder of that size"
            )
        return gen, enc

    def open_ledger(self) -> Ledger:
        """The ledger (created if missing) with this configuration's default budget."""
        from .ledger import Ledger

        return Ledger(
            self.ledger, default_budget=self.default_budget(), composition=self.composition
        )

    def build_anonymizer(self, ledger: Ledger | None = None) -> Anonymizer:
        """Generator, mechanism, ledger (opened last: nothing is created before every model
        loaded) and the :class:`~dpface.pipeline.Anonymizer` that uses them."""
        generator, encoder = self.build_generator()
        mech = self.build_mechanism(None if generator is None else generator.identity_dim)
        return self._assemble(mech, generator, encoder, ledger)

    def _assemble(
        self, mech: Mechanism, generator: Any, encoder: Any, ledger: Ledger | None
    ) -> Anonymizer:
        """The anonymiser; the template store is opened before the ledger, so a template file
        that cannot be used leaves no new ledger behind."""
        from .pipeline import Anonymizer

        templates = None
        if self.templates is not None:
            from .linking import TemplateStore

            templates = TemplateStore(self.templates)
        try:
            if ledger is None:
                ledger = self.open_ledger()
            anonymizer = Anonymizer(
                mechanism=mech,
                generator=generator,
                ledger=ledger,
                detector=self.detector,
                pseudonym=self.pseudonym,
                head=self.head,
                head_epsilon=self.head_eps,
                templates=templates,
                encoder=encoder,
                receipt_subjects="digest" if self.names == "hash" else "name",
            )
            # read by dpface.batch for the videos of a run (dpface.video)
            anonymizer.video_options = {"audio": self.audio, "detect_every": self.detect_every}
            return anonymizer
        except BaseException:
            if templates is not None:
                templates.close()
            raise

    def run_settings(self) -> dict[str, Any]:
        """What the ledger records about this run besides the anonymiser's own settings."""
        return {
            "names": self.names,
            "strict": self.strict,
            "purpose": self.purpose,
            "max_megapixels": self.max_megapixels,
            "composition": self.composition,
            "default_budget": str(self.default_budget()),
            "budget_given": self.budget is not None,
            "engine": self.engine,
        }

    # ------------------------------------------------------------------ the whole run
    def run(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        *,
        subject: str | None = None,
        subject_map: SubjectMap | str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        frame_progress: Callable[[str, str, int, int], None] | None = None,
        report: bool = True,
    ) -> BatchSummary:
        """Plan the batch (refusing unsafe output folders), build the models, open the ledger,
        anonymise every image and write outputs, receipts and this run's report.

        Everything that can make the run unusable is checked before the ledger is opened.
        Inputs may also be fsspec URLs, WebDataset tar shards and Parquet tables, and ``out``
        a URL (:mod:`dpface.sources`)."""
        from . import batch, sources

        batch.refuse_in_worker()
        if sources.needs_staging(inputs, out, self.receipts_table):
            return sources.run(
                self,
                inputs,
                out,
                receipts_table=self.receipts_table,
                image_column=self.image_column,
                progress=progress,
                runner=self._run_here,
                subject=subject,
                subject_map=subject_map,
                frame_progress=frame_progress,
                report=report,
            )
        return self._run_here(
            inputs,
            out,
            subject=subject,
            subject_map=subject_map,
            progress=progress,
            frame_progress=frame_progress,
            report=report,
        )

    def _run_here(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        *,
        subject: str | None,
        subject_map: SubjectMap | str | os.PathLike[str] | None,
        progress: Progress | None,
        frame_progress: Callable[[str, str, int, int], None] | None,
        report: bool,
    ) -> BatchSummary:
        """:meth:`run` on local files and folders: on this machine's processes, or on the
        configured engine's cluster."""
        from . import batch

        if self.engine != "local":
            from . import distributed

            return distributed.run(
                self,
                inputs,
                out,
                engine=self.engine,
                address=self.address,
                workers=self.worker_count(),
                subject=subject,
                subject_map=subject_map,
                progress=progress,
                report=report,
            )
        planned, subject, smap = self.plan_run(inputs, out, subject, subject_map)
        workers = min(self.worker_count(), len(planned.images))
        # worker processes load their models while this one checks and loads its own
        pool = (
            batch.WorkerPool(workers, self._worker_setup, len(planned.images))
            if workers > 1
            else None
        )
        try:
            return self.run_planned(
                planned,
                1 if pool is None else pool,
                subject=subject,
                subject_map=smap,
                report=report,
                progress=progress,
                frame_progress=frame_progress,
            )
        finally:
            if pool is not None:
                pool.close()  # started workers stop, whatever happened

    def plan_run(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        subject: str | None,
        subject_map: Any,
    ) -> tuple[Any, str | None, Any]:
        """(the batch plan, the checked subject, the subject map assigned to the plan):
        everything that can make a run unusable, checked before any model or ledger is opened
        (shared by :meth:`run` and ``dpface.distributed.run``)."""
        from . import batch

        subject = batch.check_subject(subject)
        smap = (
            batch.read_subject_map(subject_map)
            if isinstance(subject_map, (str, os.PathLike))
            else subject_map
        )
        if subject is not None and smap is not None:
            raise UsageError("give --subject or --subjects, not both")
        planned = batch.plan(inputs, out, names=self.names)
        if smap is not None:
            smap.assign(planned)  # rows matching several inputs are usage errors: check now
        return planned, subject, smap

    def run_planned(
        self,
        planned: Any,
        workers: Any,
        *,
        subject: str | None,
        subject_map: Any,
        report: bool,
        progress: Any = None,
        frame_progress: Any = None,
        settings: dict[str, Any] | None = None,
    ) -> BatchSummary:
        """Build the anonymiser, run the planned batch on ``workers`` (1, or a started pool)
        and close the ledger and template store whatever happens."""
        from . import batch

        generator, encoder = self.build_generator()
        mech = self.build_mechanism(None if generator is None else generator.identity_dim)
        batch.prepare_output(planned)
        anonymizer = self._assemble(mech, generator, encoder, None)
        try:
            return batch.run(
                anonymizer,
                planned,
                subject=subject,
                subject_map=subject_map,
                max_megapixels=self.max_megapixels,
                strict=self.strict,
                settings={**self.run_settings(), **(settings or {})},
                budget_given=self.budget is not None,
                report=report,
                progress=progress,
                workers=workers,
                frame_progress=frame_progress,
                resume=self.resume,
            )
        finally:
            anonymizer.ledger.close()
            if anonymizer.templates is not None:
                anonymizer.templates.close()
