"""tierline on a Ray cluster (the optional extra: ``pip install 'tierline[ray]'``).

For people who already hold a Ray Dataset of jobs (one job per row: the job's fields as
``ray.data.read_json`` gives them, or a ``job`` column holding the JSON line)::

    import ray, tierline.ray
    from tierline.config import load_config

    ds = ray.data.read_json("s3://bucket/jobs/")
    out = tierline.ray.dispatch(ds, load_config("tierline.toml"), actors=8)
    out.write_json("s3://bucket/results/")     # key, id, status, output, cost_usd, result, calls

``dispatch`` returns a lazy Dataset: one row per job with the result line (``result``, JSON)
and the ledger rows of its calls (``calls``, JSON). ``classify`` adds ``tier``, ``why`` and
``confidence`` to each row. The command line's ``tierline run --engine ray`` uses the same
actors and also writes the results file, the one ledger and the summary (engine.py); unlike
``dispatch``, it records each call on disk in the actor, so a killed actor's paid calls reach
the ledger (fragments.py). Here ``calls`` travels with its result; pass ``run_dir`` to get the
command line's guarantee (a killed actor's answers reused, not paid again; every paid call on
disk in the actor files of that directory, which ``record`` merges into a ledger).

Ray is imported only when one of these is called: importing ``tierline.ray`` does not need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config

__all__ = ["classify", "dispatch", "record"]


def dispatch(
    ds: Any,
    config: Config,
    *,
    actors: int = 2,
    batch_size: int = 256,
    max_cost_usd: float | None = None,
    num_cpus: float = 1.0,
    run_dir: str | Path | None = None,
    run_id: str = "ray",
) -> Any:
    """Tier and dispatch every row of `ds` through a pool of `actors` tierline dispatchers.

    Limits are split evenly over the actors and `max_cost_usd` is one budget for all of them
    (tierline/ray/limits.py, state.py). With `run_dir` (a directory every node mounts at the
    same path), each actor records its calls and answers there as `tierline run --engine ray`
    does: a block Ray retries after an actor loss, or the same pipeline run again with the same
    `run_dir`, reuses the answers already paid for instead of sending them again, and
    `tierline.ray.record(run_dir, ledger)` puts every paid call in a ledger, as one run.

    The run's state actor (budget, and the handles of the dispatcher actors) is named
    ``tierline-RUN_ID-HEX``, so `ray.util.list_named_actors()` finds it."""
    import uuid
    from decimal import Decimal

    from ..ledger.pricing import to_micros
    from .engine import check_config, require_ray
    from .fragments import mark_shared
    from .limits import actors_for
    from .state import RunState
    from .worker import Dispatcher

    ray = require_ray()
    check_config(config)
    actors = actors_for(config, actors)
    cap = None if max_cost_usd is None else to_micros(Decimal(repr(max_cost_usd)))
    name = f"tierline-{run_id}-{uuid.uuid4().hex[:8]}"
    state = ray.remote(RunState).options(num_cpus=0, name=name).remote(cap)
    return ds.map_batches(
        Dispatcher,
        fn_constructor_kwargs={
            "config": config,
            "run_id": run_id,
            "state": state,
            "actors": actors,
            "cap_micros": cap,
            "fragments": None if run_dir is None else str(mark_shared(Path(run_dir))),
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=num_cpus,
    )


def record(run_dir: str | Path, ledger: str | Path, *, run_id: str = "ray") -> int:
    """Merge the calls `dispatch(..., run_dir=run_dir)` paid for into the SQLite ledger at
    `ledger` (created if missing) as one run, once the pipeline has finished; the number of
    calls. `tierline ledger summary --ledger LEDGER` then shows them as after a CLI run.
    Needs no Ray (the actor files are SQLite)."""
    from .fragments import merge_run_dir

    return merge_run_dir(Path(run_dir).resolve(), Path(ledger), run_id)


class _Classifier:
    def __init__(self, config: Config) -> None:
        from ..tiering.pipeline import Tierer

        self.tierer = Tierer.from_config(config.tiering)

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        from ..jobs import Job
        from .worker import _job_of

        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {"tier": [], "why": [], "confidence": []}
        for row in rows:
            job = _job_of(row)
            vote = self.tierer(job) if isinstance(job, Job) else None
            out["tier"].append(None if vote is None else vote.tier)
            out["why"].append(None if vote is None else vote.why)
            out["confidence"].append(None if vote is None else round(vote.confidence, 3))
        kept = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}
        return {**kept, **out}


def classify(ds: Any, config: Config, *, actors: int = 1, batch_size: int = 1024) -> Any:
    """Each row of `ds` with its tier, why and confidence added (no backend is called)."""
    from .engine import require_ray

    ray = require_ray()
    return ds.map_batches(
        _Classifier,
        fn_constructor_kwargs={"config": config},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="pyarrow",
    )
