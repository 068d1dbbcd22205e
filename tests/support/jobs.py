"""Driving an engine through a list of jobs, and the budget that makes experts contend."""

from pipeline.engine import Engine
from pipeline.generate import GenerationFailed
from pipeline.loader import DDMModel
from pipeline.manifest import expert_key, is_expert_key
from pipeline.request import GenerationRequest, resolve
from pipeline.results import Failed, Finished, GenerationResult


def run_jobs(engine: Engine, jobs: list[tuple[str, GenerationRequest]]) -> dict[str, GenerationResult]:
    """Run jobs through one engine, admitting each as a slot frees (a steady stream), until
    all finish. Raises on the first failure."""
    results, queue = {}, list(jobs)
    while queue or engine.has_work:
        while queue and engine.free_slots > 0:
            job_id, request = queue.pop(0)
            engine.admit(job_id, resolve(engine.model.manifest, request))
        for event in engine.tick():
            match event:
                case Finished(job_id=job_id, result=result):
                    results[job_id] = result
                case Failed(job_id=job_id, message=message):
                    raise GenerationFailed(f"{job_id}: {message}")
    return results


def one_expert_budget(model: DDMModel) -> int:
    """A device budget where every non-expert component fits but only one expert does."""
    experts = [model.residency.nbytes(expert_key(i)) for i in range(model.num_experts)]
    others = sum(model.residency.nbytes(n) for n in model.components if not is_expert_key(n))
    return others + int(max(experts) * 1.5)
