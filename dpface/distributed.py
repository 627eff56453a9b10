"""Run a batch on a distributed engine (Dask or Ray): the same anonymiser, one shared ledger.

:func:`run` is :meth:`dpface.AnonymizeConfig.run` with the photos handed to the workers of a
Dask or Ray cluster instead of local processes. Each worker process builds the configuration's
:class:`~dpface.pipeline.Anonymizer` once (models loaded once per process, as
:class:`dpface.batch.WorkerPool` does) and opens the configuration's ledger under the caller's
run id; every photo then goes through exactly the code of a local run (``batch._process``:
anonymise, write the output and its receipt), so outputs, receipts, refusals and the run's
report are those of a local run. The caller plans the batch, records the run, collects the
outcomes and writes the summary and report, through :func:`dpface.batch.run` itself: the engine
only replaces the local worker pool.

Budgets bind across workers because all of them charge ONE ledger: give a ``postgresql://``
ledger for workers on several machines (an SQLite file works only where every worker sees the
same local disk). Photos whose ledger work must happen in input order -- photos sharing a named
subject, byte-identical files, every photo when faces are linked -- are sent as one task and
processed in input order by one worker, so a subject whose photos sit in different shards is
refused exactly where a local run refuses it; independent photos run in parallel.

Engines: ``"dask"`` (``dask.distributed``: a ``LocalCluster`` of ``workers`` single-threaded
processes, or the scheduler at ``address``; ``pip install 'dpface[distributed]'``) and ``"ray"``
(``ray.init``: a local instance with ``workers`` CPUs, or the cluster at ``address``;
``pip install ray``). The workers must see the input and output paths (a shared file system;
URLs, tar shards and Parquet tables are staged under ``$DPFACE_STAGING`` by
:mod:`dpface.sources`, which must then be shared too).

Why Dask is the default (measured with ``scripts/bench_ledger.py --engines`` on this project's
2-core machine, ``docs/results/ledger.md``): for photos that take about a second each the two
are equal -- the 16 sample photos with 2 workers on a PostgreSQL ledger took 26.5 s with Dask
and 27.7 s with Ray, cluster start and model loading included; a local cluster started in 0.7 s
(Dask) against 2.6 s (Ray); a no-op task cost 1.6 ms against 0.8 ms, nothing next to a photo.
So the choice rests on what each brings along: Dask is 24 MB of Python whose workers are plain
processes; Ray is a 240 MB binary wheel with its own daemons (raylet, GCS) and writes an
authentication token into the home folder on first start. Dask is the one pinned and tested
(``tests/integration/test_ledger_concurrency.py``); Ray runs the same code path untested in
CI. On this
machine neither makes 2 workers faster than 1 (2 cores, shared with other jobs, each worker
loading its own models): the engines are for more machines, not for more processes on one.

Resumable and idempotent (:mod:`dpface.manifest`): every photo's releases are made under a
release key of the job (``Ledger.release_once``: charge and drawn value committed together),
and each finished photo is recorded in the output folder's manifest. A task whose worker dies
is run again by Dask on another worker (``distributed.scheduler.allowed-failures``) and the
rerun gets back the values already paid for instead of charging again; a task that still
fails has its photos reported as problems, and running the job again with ``resume=True``
(``--resume``) finishes them the same way, skipping the photos already written.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .batch import (
    Problem,
    WorkerPool,
    _Context,
    _Job,
    _one_thread,
    _Outcome,
    _process,
    refuse_in_worker,
)
from .errors import UsageError

if TYPE_CHECKING:
    from .batch import BatchSummary, PlannedImage, Prepare, Progress, SubjectMap
    from .config import AnonymizeConfig
    from .pipeline import Anonymizer

__all__ = ["ENGINES", "EnginePool", "groups", "run"]

ENGINES = ("dask", "ray")
CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler given with --address

# per worker process: run id -> its anonymiser (models loaded once per process and run)
_BUILT: dict[str, Anonymizer] = {}
_PREPARED: dict[str, Any] = {}
_LOCK = threading.Lock()


def groups(before: Sequence[Sequence[int]]) -> list[list[int]]:
    """The photos that must be processed in input order, as groups (each in input order; the
    groups ordered by their first photo): ``before[i]`` lists the earlier photos whose ledger
    work must be over before photo ``i``'s starts (:func:`dpface.batch._ordering`)."""
    parent = list(range(len(before)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, earlier in enumerate(before):
        for j in earlier:
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    out: dict[int, list[int]] = {}
    for i in range(len(before)):
        out.setdefault(find(i), []).append(i)
    return [out[k] for k in sorted(out)]


def _prepared(key: str, prepare: Prepare) -> Any:
    """This worker process's ``prepare()`` result for the pool ``key`` (the models, loaded
    once per process)."""
    with _LOCK:  # a worker with several threads loads them once
        if key not in _PREPARED:
            os.environ["DPFACE_WORKER_PROCESS"] = "1"
            _one_thread()
            _PREPARED.clear()
            _PREPARED[key] = prepare()  # loads the models
        return _PREPARED[key]


def _preload(key: str, prepare: Prepare) -> int:
    """A task sent to every worker when the pool starts: load the models while the caller
    plans and loads its own (as :class:`dpface.batch.WorkerPool`'s workers do)."""
    _prepared(key, prepare)
    return os.getpid()


def _anonymizer(key: str, prepare: Prepare, run_id: str) -> Anonymizer:
    """This worker process's anonymiser for ``run_id`` (built on first use); ``key`` names the
    pool, whose ``prepare`` (the models) is run once per process."""
    if run_id not in _BUILT:
        # opens the ledger under the caller's run id
        _BUILT[run_id] = _prepared(key, prepare)(run_id)
    return _BUILT[run_id]


def _task(
    key: str,
    prepare: Prepare,
    run_id: str,
    indices: list[int],
    items: list[PlannedImage],
    kwargs: list[dict[str, Any]],
    ctx: _Context,
) -> list[tuple[int, _Outcome, int]]:
    """One group of photos, in input order, in a worker process: (index, outcome, pid)."""
    os.environ["DPFACE_WORKER_PROCESS"] = "1"  # a worker never starts a batch of its own
    anonymizer = _anonymizer(key, prepare, run_id)
    return [
        (i, _process(anonymizer, item, kw, ctx), os.getpid())
        for i, item, kw in zip(indices, items, kwargs, strict=True)
    ]


def _forget(run_id: str) -> None:
    """After a run: close this worker's ledger (and template store) of that run."""
    anonymizer = _BUILT.pop(run_id, None)
    if anonymizer is not None:
        anonymizer.ledger.close()
        if anonymizer.templates is not None:
            anonymizer.templates.close()


class EnginePool(WorkerPool):
    """A :class:`dpface.batch.WorkerPool` whose workers are those of a Dask or Ray cluster.

    ``workers``: processes of a local cluster started here (ignored with ``address``: the
    cluster's own workers are used). ``prepare`` (picklable) runs once in every worker process
    that gets a task. Close it when done (``batch.run`` does).
    """

    def __init__(
        self,
        engine: str,
        workers: int,
        prepare: Prepare,
        images: int,
        *,
        address: str | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be a whole number >= 1, got {workers!r}")
        self.engine = engine
        self.size = workers
        self.total = images
        self.prepare = prepare
        self.key = uuid.uuid4().hex
        self.notes: list[Problem] = []
        self.closed = False
        self.pids: set[int] = set()
        self._run_ids: list[str] = []
        self._cluster: Any = None
        self._started = False
        self._client: Any = None
        self._preloads: list[Any] = []
        if engine == "dask":
            from dask.distributed import Client, LocalCluster

            if address is None:
                self._cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                self._client = Client(self._cluster)
            else:
                try:
                    self._client = Client(address, timeout=CONNECT_TIMEOUT)
                except (OSError, TimeoutError, ValueError) as err:
                    raise UsageError(
                        f"--address: cannot reach a dask scheduler at {address!r} within "
                        f"{CONNECT_TIMEOUT:g} s ({type(err).__name__}: {err}); start one "
                        "(`dask scheduler`, then `dask worker ADDRESS` on each machine) or "
                        "leave --address out for a local cluster"
                    ) from err
            # every worker loads its models now, while the caller plans and loads its own;
            # one thread per worker, so the run's tasks queue behind this one
            self._preloads = [
                self._client.submit(
                    _preload, self.key, prepare, workers=[w], allow_other_workers=False, pure=False
                )
                for w in self._client.scheduler_info()["workers"]
            ]
        else:
            import ray

            self._started = not ray.is_initialized()
            if self._started:
                if address is None:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                else:
                    try:
                        ray.init(address=address, log_to_driver=False)
                    except (ConnectionError, OSError, TimeoutError, ValueError) as err:
                        raise UsageError(
                            f"--address: cannot reach a ray cluster at {address!r} "
                            f"({type(err).__name__}: {err})"
                        ) from err
            self._client = ray

    def run(self, anonymizer: Anonymizer, job: _Job, progress: Progress | None) -> list[_Outcome]:
        refuse_in_worker()
        self._run_ids.append(job.run_id)
        parts = groups(job.before)
        args = [
            (
                self.key,
                self.prepare,
                job.run_id,
                part,
                [job.items[i] for i in part],
                [job.kwargs[i] for i in part],
                job.ctx,
            )
            for part in parts
        ]
        outcomes: dict[int, _Outcome] = {}
        done = 0
        for part, result in zip(parts, self._map(args), strict=True):
            if isinstance(result, BaseException):
                for i in part:
                    outcomes[i] = _Outcome(
                        Counter({"failed": 1}),
                        [
                            Problem(
                                str(job.items[i].source),
                                f"its {self.engine} task failed ({type(result).__name__}: "
                                f"{result}); what it charged stays charged: run the job "
                                "again with --resume (resume=True) to finish it without "
                                "charging again",
                            )
                        ],
                        {},
                    )
            else:
                for i, outcome, pid in result:
                    outcomes[i] = outcome
                    self.pids.add(pid)
            done += len(part)
            if progress is not None:
                progress(done, self.total, "")
        return [outcomes[i] for i in range(len(job.items))]

    def _map(self, args: list[tuple[Any, ...]]) -> list[Any]:
        """Run every task (no retries); its result, or the exception it failed with."""
        results: list[Any] = []
        if self.engine == "dask":
            from dask.distributed import wait

            # no retries of a task's own error; a dead worker's task is rescheduled by Dask,
            # which charges nothing twice (release keys, dpface.manifest)
            futures = [self._client.submit(_task, *a, pure=False, retries=0) for a in args]
            wait(futures)
            for f in futures:
                results.append(f.exception() if f.status == "error" else f.result())
            return results
        ray = self._client
        remote = ray.remote(num_cpus=1, max_retries=0)(_task)
        refs = [remote.remote(*a) for a in args]
        for ref in refs:
            try:
                results.append(ray.get(ref))
            except Exception as err:  # the task's own error or its worker's death
                results.append(err)
        return results

    def close(self, *, graceful: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.engine == "dask":
                for run_id in self._run_ids:  # the workers close their ledgers of this run
                    self._client.run(_forget, run_id)
                self._client.close()
                if self._cluster is not None:
                    self._cluster.close()
            elif self._started:
                self._client.shutdown()  # a local Ray instance: its workers exit
        except Exception:
            pass


def run(
    config: AnonymizeConfig,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    engine: str = "dask",
    address: str | None = None,
    workers: int = 2,
    subject: str | None = None,
    subject_map: SubjectMap | str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    report: bool = True,
) -> BatchSummary:
    """:meth:`AnonymizeConfig.run` on a Dask or Ray cluster (see the module's docstring).

    The ledger (``config.ledger``) must be one every worker reaches: a PostgreSQL URL, or an
    SQLite file on a disk they all see; never ``":memory:"``. Seeded runs are refused (seeded
    noise is reproducible in one process only).
    """

    refuse_in_worker()
    if str(config.ledger) == ":memory:":
        raise UsageError("a distributed run needs a ledger every worker reaches, not :memory:")
    if config.seed is not None:
        raise UsageError("seeded noise is reproducible only in one process: no --seed here")
    planned, subject, smap = config.plan_run(inputs, out, subject, subject_map)
    pool = EnginePool(engine, workers, config._worker_setup, len(planned.images), address=address)
    try:
        return config.run_planned(
            planned,
            pool,
            subject=subject,
            subject_map=smap,
            report=report,
            progress=progress,
            settings={"engine": engine},
        )
    finally:
        pool.close()
