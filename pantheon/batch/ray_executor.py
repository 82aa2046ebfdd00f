"""The ``ray`` batch engine: the same cases as the ``local`` engine, run by Ray actors.

``pantheon batch PIPELINE --engine ray [--ray-address ADDR] --workers N`` starts N long-lived
actors (:class:`CaseWorker`); each calls :func:`.worker.init_worker` ONCE (one model load per
actor) and then runs :func:`.worker.process_case` for the cases it is handed. The parent (Ray
driver) keeps at most one case in flight per actor, calls ``on_start(task)`` right before it hands
a case over (so "running" in the manifest means running) and yields each outcome as soon as it
finishes (``ray.wait``). It alone writes the manifest and renames the staging folders, exactly as
with the local engine.

Resources: each actor asks for ``num_cpus`` = its torch threads (the cluster's CPUs shared among
the N actors, at most one node's worth) and, when the model runs on a GPU (``--device cuda``, or
``auto`` with GPUs in the cluster, from ``ray.cluster_resources()``), ``num_gpus`` = 1 (or a
fraction of a GPU when there are fewer GPUs than actors). Ray then sets ``CUDA_VISIBLE_DEVICES``
for each actor, which uses ``cuda`` (its own GPU).

Storage: shared file system. Inputs, and the output folder, must be visible at the SAME path on
every node (NFS, Lustre, a mounted bucket...): the actors read the inputs and write their staging
folders ``<output>/.partial-...`` there, and the driver renames them.

Connection: ``--ray-address`` (or Ray's own ``RAY_ADDRESS`` variable) connects to a running
cluster; otherwise a Ray session is started on this machine (and shut down after the batch). When
Ray is already initialised in this process (a notebook, a test), that session is used as it is.

Ray is an optional dependency (``pip install "pantheon[ray]"``); nothing here imports it at module
level.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterator, List, Optional

from ..errors import PantheonError

WORKER_DIED = "The Ray worker died while running this case (out of memory, killed or its node was lost)."
_CONFIG: Dict[str, Optional[str]] = {"address": None}


@contextlib.contextmanager
def ray_address(address: Optional[str]):
    """Within the block, ``--engine ray`` connects to ``address`` (None: RAY_ADDRESS or a local Ray)."""
    old = _CONFIG["address"]
    _CONFIG["address"] = address or None
    try:
        yield
    finally:
        _CONFIG["address"] = old


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise PantheonError('The ray engine needs Ray: pip install "pantheon[ray]" (or pip install "ray>=2.9").') \
            from exc
    return ray


class CaseWorker:
    """One Ray actor: loads the pipeline once, then processes cases one at a time."""

    def __init__(self, pipeline: str, options: dict, threads: int):
        from .worker import init_worker
        init_worker(pipeline, options, threads)

    def process(self, task: dict) -> dict:
        from .worker import process_case
        return process_case(task)


def plan_resources(workers: int, device: Optional[str], cluster: dict, node_cpus: List[float]) -> dict:
    """Per-actor ``num_cpus``/``num_gpus``, torch threads and the device string the actors use."""
    workers = max(1, int(workers))
    device = (device or "auto").strip()
    gpus = float(cluster.get("GPU", 0) or 0)
    cpus = float(cluster.get("CPU", 0) or 0)
    wants_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if device.startswith("cuda") and gpus <= 0:
        raise PantheonError("--device cuda was asked for but the Ray cluster has no GPU; use --device cpu or auto.")
    num_gpus = 0.0
    if wants_gpu:
        # one GPU per actor when there are enough; else actors share them (fractions Ray can pack)
        num_gpus = 1.0 if gpus >= workers else math.floor(100 * gpus / workers) / 100 or 0.01
        device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES: the actor's own GPU is cuda:0
    elif device == "auto":
        device = "cpu"
    largest_node = max(node_cpus) if node_cpus else cpus
    threads = int(max(1, min(largest_node or 1, (cpus or 1) // workers)))
    return {"num_cpus": threads, "num_gpus": num_gpus, "threads": threads, "device": device}


def _connect(ray) -> bool:
    """Initialise Ray if needed; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = _CONFIG["address"]
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        import os

        from ..runtime import (
            cpu_cores,  # address=None: RAY_ADDRESS if set, else a new local Ray
        )
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=cpu_cores(), include_dashboard=False, log_to_driver=False)
    return True


def ray_executor(pipeline: str, options: dict, tasks: List[dict], workers: int,
                 on_start: Callable[[dict], int]) -> Iterator[dict]:
    """Executor contract of :func:`.runner.local_executor`, on Ray actors (see the module doc)."""
    ray = _import_ray()
    if not tasks:
        return
    started = _connect(ray)
    actors: list = []
    try:
        workers = max(1, min(int(workers), len(tasks)))
        node_cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        plan = plan_resources(workers, options.get("device"), ray.cluster_resources(), node_cpus)
        opts = dict(options, device=plan["device"]) if "device" in options else dict(options)
        remote_cls = ray.remote(CaseWorker).options(num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"],
                                                    max_restarts=0, max_task_retries=0)

        def new_actor():
            return remote_cls.remote(pipeline, opts, plan["threads"])

        actors = [new_actor() for _ in range(workers)]
        idle = list(actors)
        queue = list(tasks)
        inflight: Dict[object, tuple] = {}  # ObjectRef -> (task, actor)
        while queue or inflight:
            while queue and idle:
                task = queue.pop(0)
                actor = idle.pop(0)
                task["attempt"] = on_start(task)
                inflight[actor.process.remote(dict(task))] = (task, actor)
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                task, actor = inflight.pop(ref)
                try:
                    yield ray.get(ref)
                    idle.append(actor)
                    continue
                except ray.exceptions.RayActorError:
                    error = WORKER_DIED
                except ray.exceptions.RayTaskError as exc:  # process_case itself raised (not a case failure)
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    error = (f"{type(cause).__name__}: "
                             f"{str(cause).strip().splitlines()[0] if str(cause).strip() else ''}")
                except Exception as exc:  # noqa: BLE001 - e.g. the object was lost with its node
                    error = f"{type(exc).__name__}: {exc}"
                # the actor is dead or in an unknown state: replace it, fail only this case
                with contextlib.suppress(Exception):
                    ray.kill(actor)
                actors.remove(actor)
                fresh = new_actor()
                actors.append(fresh)
                idle.append(fresh)
                yield {"case_id": task["case_id"], "attempt": task["attempt"], "state": "failed", "error": error}
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if started:
            ray.shutdown()
