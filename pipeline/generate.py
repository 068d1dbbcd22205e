"""One whole generation: a thin loop over the step-level engine."""

from typing import Callable

from .engine import Engine
from .loader import DDMModel
from .request import GenerationRequest, resolve
from .results import Failed, Finished, GenerationResult, Progress


class GenerationFailed(RuntimeError):
    pass


def run_jobs(engine: Engine, jobs: list[tuple[str, GenerationRequest]]) -> dict[str, GenerationResult]:
    """Run jobs through one engine, admitting each as a slot frees (a steady stream), until
    all finish. Raises on the first failure."""
    results, queue = {}, list(jobs)
    while queue or engine.has_work:
        while queue and engine.free_slots > 0:
            job_id, request = queue.pop(0)
            engine.admit(job_id, resolve(engine.model.manifest, request))
        for event in engine.tick():
            if isinstance(event, Finished):
                results[event.job_id] = event.result
            elif isinstance(event, Failed):
                raise GenerationFailed(f"{event.job_id}: {event.message}")
    return results


def generate(model: DDMModel, request: GenerationRequest,
             on_progress: Callable[[int, int], None] | None = None) -> GenerationResult:
    """Raises InvalidRequest for a request the model cannot serve."""
    engine = Engine(model, max_batch=1)
    engine.admit("generate", resolve(model.manifest, request))
    while engine.has_work:
        for event in engine.tick():
            if isinstance(event, Progress) and on_progress:
                on_progress(event.step, event.total)
            elif isinstance(event, Finished):
                return event.result
            elif isinstance(event, Failed):
                raise GenerationFailed(event.message)
    raise GenerationFailed("the engine stopped without a result")
