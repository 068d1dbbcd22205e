"""One whole generation: a thin loop over the step-level engine."""

from typing import Callable

from .engine import Engine
from .loader import DDMModel
from .request import GenerationRequest, resolve
from .results import Failed, Finished, GenerationResult, Progress


class GenerationFailed(RuntimeError):
    pass


def generate(model: DDMModel, request: GenerationRequest,
             on_progress: Callable[[int, int], None] | None = None) -> GenerationResult:
    """Raises InvalidRequest for a request the model cannot serve."""
    engine = Engine(model, max_batch=1)
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
