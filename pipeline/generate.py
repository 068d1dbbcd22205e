"""Whole generations: thin loops over the step-level engine (one, or many batched)."""

from typing import Callable

from .engine import Engine, MemoryLimits
from .loader import DDMModel
from .request import GenerationRequest, resolve
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


def generate_batch(model: DDMModel, requests: list[GenerationRequest], max_batch: int = 16) -> list[GenerationResult]:
    """Every request's result, in order; they run `max_batch` at a time in one engine, each
    admitted as a slot frees. Raises InvalidRequest or GenerationFailed on the first problem."""
    engine = Engine(model, max_batch=max_batch)
    resolved = [resolve(model.manifest, r) for r in requests]
    queue, results = list(enumerate(resolved)), {}
    while queue or engine.has_work:
        while queue and engine.free_slots > 0:
            index, request = queue.pop(0)
            engine.admit(str(index), request)
        for event in engine.tick():
            match event:
                case Finished(job_id=job_id, result=result):
                    results[int(job_id)] = result
                case Failed(job_id=job_id, message=message):
                    raise GenerationFailed(f"request {job_id}: {message}")
    return [results[i] for i in range(len(requests))]
