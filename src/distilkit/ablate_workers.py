"""The study's worker processes: which sub-run runs when (``run_workers``) and one sub-run in a
worker (``_worker_job``). ``distilkit ablate`` with ``workers`` > 1 calls ``run_workers`` before
its serial pass, which then only collects the finished results."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from distilkit.ablate_sizes import VARIANTS, AblationSize, active_variants
from distilkit.ablate_steps import _Step
from distilkit.ablate_study import _Study

log = logging.getLogger("distilkit.ablate")

# The order in which the workers evaluate the models, after the teacher: the rows the study's
# goals compare first ((i) against (vi), the embedding track), then the ablations.
EVALUATION_ORDER = ("vi", "i", "E", "ii", "iii", "iv", "v")


def run_workers(study: _Study, teacher: _Step, data: _Step, inits: dict[str, _Step]) -> None:
    """Run the distillations and every evaluation sub-run in ``workers`` processes.

    Jobs wait in a priority queue and at most ``workers`` run at once, so the study chooses
    the order in which results arrive: the distillations first (the longest, and each
    student's evaluations wait on its distillation), then every zero-shot score (a minute
    each), then the fine-tuning of one model after another in ``EVALUATION_ORDER``. A study
    stopped part-way thus has whole rows for the models its goals compare first. The
    serial pass that follows only collects the finished results.
    """
    import concurrent.futures as cf
    import heapq
    import itertools
    import multiprocessing as mp

    s = study.s
    ev = s.evaluate
    variants = active_variants(s)
    rank = {"teacher": 0} | {v.slug: 1 + EVALUATION_ORDER.index(v.key) for v in variants}
    # (stage, model rank, arrival): distill 0 < zero-shot 1 < fine-tune 2.
    queue: list[tuple[tuple[int, int, int], tuple, str | None]] = []
    arrival = itertools.count()

    def push(stage: int, label: str, job: tuple, then: str | None = None) -> None:
        heapq.heappush(queue, ((stage, rank[label], next(arrival)), job, then))

    def evaluations(label: str, model: _Step) -> None:
        if ev.zeroshot:
            push(1, label, ("zeroshot", label, model))
        for task in ev.tasks:
            for i in range(ev.seeds):
                push(2, label, ("finetune", label, model, task, i))

    for v in variants:
        if v.distill:
            job = ("distill", v.key, study.teacher_of(v, teacher), study.start_of(v, inits))
            push(0, v.slug, (*job, data), v.slug)
    evaluations("teacher", teacher)
    for v in variants:
        if not v.distill:
            evaluations(v.slug, inits["teacher"])

    running: dict[cf.Future, str | None] = {}
    with cf.ProcessPoolExecutor(
        s.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
    ) as pool:
        try:
            while queue or running:
                while queue and len(running) < s.workers:
                    _, job, then = heapq.heappop(queue)
                    running[pool.submit(_worker_job, s, study.out, job)] = then
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in finished:
                    then = running.pop(f)
                    st, ran = f.result()  # a failed sub-run raises here
                    study.ran += ran
                    if then:
                        evaluations(then, st)
        except BaseException:
            # Stop queueing; the sub-runs already running finish (they are resumable).
            for f in running:
                f.cancel()
            raise


def _worker_init() -> None:
    """A worker process: dies with the study, logs like the CLI, without progress bars (two
    would interleave)."""
    _die_with_parent()
    os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies. Without it, a study killed with
    SIGKILL leaves its workers running their jobs, and a rerun would run the same sub-runs
    beside them, into the same folders."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot tie this worker's life to the study (prctl failed)")
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(1)


def _worker_job(size: AblationSize, out: Path, job: tuple) -> tuple[_Step | None, list[str]]:
    """One sub-run in a worker process: ``(the distilled student's step or None, ran)``."""
    study = _Study(size, out)
    kind, key, *args = job
    if kind == "distill":
        teacher, start, data = args
        v = next(v for v in VARIANTS if v.key == key)
        return study._distill(v, teacher, start, data), study.ran
    if kind == "finetune":
        model, task, i = args
        study.finetune_seed(key, model, task, i)
    elif kind == "zeroshot":
        study.zeroshot(key, args[0])
    else:
        raise ValueError(f"unknown job {kind}")
    return None, study.ran
