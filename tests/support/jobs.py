"""Driving an engine through a list of jobs, and the budget that makes experts contend."""

from pipeline.engine import Engine
from pipeline import generate
from pipeline.loader import DDMModel
from pipeline.manifest import expert_key, is_expert_key
from pipeline.request import GenerationRequest, resolve
from pipeline.results import GenerationResult


def run_jobs(engine: Engine, jobs: list[tuple[str, GenerationRequest]]) -> dict[str, GenerationResult]:
    """Run named jobs through one engine, admitting each as a slot frees (a steady stream), until
    all finish (pipeline.generate.run_jobs, with each request resolved for the engine's model)."""
    return generate.run_jobs(engine, [(job_id, resolve(engine.model.manifest, r)) for job_id, r in jobs])


def one_expert_budget(model: DDMModel) -> int:
    """A device budget where every non-expert component fits but only one expert does."""
    experts = [model.residency.nbytes(expert_key(i)) for i in range(model.num_experts)]
    others = sum(model.residency.nbytes(n) for n in model.components if not is_expert_key(n))
    return others + int(max(experts) * 1.5)
