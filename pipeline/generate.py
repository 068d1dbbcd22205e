"""Whole generations: thin loops over the step-level engine (one, or many batched)."""

from typing import Callable

from .engine import Engine, MemoryLimits
from .loader import DDMModel
from .request import GenerationRequest, ResolvedRequest, resolve
from .results import Failed, Finished, GenerationResult, Progress


class GenerationFailed(RuntimeError):
    pass


def generate(model: DDMModel, request: GenerationRequest,
             on_progress: Callable[[int, int], None] | None = None,
             limits: MemoryLimits = MemoryLimits()) -> GenerationResult:
    """Raises InvalidRequest for a request the model cannot serve. `limits`: the memory plan's
    (pipeline/planner/serving.memory_limits), as a worker runs under them."""
    engine = Engine(model, max_batch=1, limits=limits)
    engine.admit("generate", resolve(model.manifest, request))
    while engine.has_work:
        for event in engine.tick():
            match event:
                case Progress(step=step, total=total) if on_progress:
                    on_progress(step, total)
                case Finished(result=result):
                    return result
                case Failed(message=message):
                    raise GenerationFailed(message)
    raise GenerationFailed("the engine stopped without a result")


def run_jobs(engine: Engine, jobs: list[tuple[str, ResolvedRequest]]) -> dict[str, GenerationResult]:
    """Every job's result by its id, on `engine` (any runner, placement or memory limits): each
    admitted as a slot frees, a steady stream, until all finish. Raises GenerationFailed on the
    first failure."""
    queue, results = list(jobs), {}
    while queue or engine.has_work:
        while queue and engine.free_slots > 0:
            job_id, request = queue.pop(0)
            engine.admit(job_id, request)
        for event in engine.tick():
            match event:
                case Finished(job_id=job_id, result=result):
                    results[job_id] = result
                case Failed(job_id=job_id, message=message):
                    raise GenerationFailed(f"{job_id}: {message}")
    return results


def generate_batch(model: DDMModel, requests: list[GenerationRequest], max_batch: int = 16,
                   engine: Engine | None = None) -> list[GenerationResult]:
    """Every request's result, in order; they run `max_batch` at a time in one engine, each
    admitted as a slot frees. `engine`: run on this one instead (another runner, placement or
    memory limits; its own max_batch). Raises InvalidRequest or GenerationFailed on the first
    problem."""
    engine = engine or Engine(model, max_batch=max_batch)
    resolved = [(f"request {i}", resolve(model.manifest, r)) for i, r in enumerate(requests)]
    results = run_jobs(engine, resolved)
    return [results[job_id] for job_id, _ in resolved]
