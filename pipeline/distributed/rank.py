"""A rank other than 0: computes the expert rows rank 0 sends, with the engine's own forward.

It keeps, per request, what rank 0 sent once (its text conditioning, shared between requests
with the same text; its image positions and first-frame condition) and the step cache of the
rows it computes: a row always goes to the same rank (runner.py), so its cached residual is here.
Rank 0 says when a request or a text is no longer needed.
"""

import gc
from dataclasses import dataclass, field

import torch

from ..engine import Engine, failure_code
from ..request_state import TextEmbedding
from ..sampling import Branch
from ..speed import PRESETS
from ..step_cache import StepCache
from .wire import Link


@dataclass(eq=False)
class RowSource:
    """What Engine._expert_forward reads of a request, on this rank."""

    job_id: str
    prompt: TextEmbedding
    negative: TextEmbedding
    img_ids: torch.Tensor
    step_cache: StepCache
    first_frame_cond: torch.Tensor | None
    latents: torch.Tensor | None = None  # this tick's, in the expert dtype
    step: int = 0
    t: float = 1.0
    compute: "Blocks" = field(default_factory=lambda: Blocks([]))


@dataclass
class Blocks:
    """Stands in for ComputeCounts during one forward: records each row's blocks, in row order,
    for rank 0's counts."""

    ran: list

    def ran_row(self, blocks: int, of: int) -> None:
        self.ran.append((blocks, of))


class RankServer:
    def __init__(self, model, link: Link):
        self.model, self.link = model, link
        self.engine = Engine(model, max_batch=1)  # only its expert forward runs here
        self.texts: dict[str, TextEmbedding] = {}
        self.jobs: dict[str, RowSource] = {}

    def serve(self) -> None:
        """Answers rank 0 until it says stop; GroupFailed when rank 0 is gone or silent."""
        with torch.inference_mode():
            while True:
                header, tensors = self.link.recv()
                if header["kind"] == "stop":
                    return
                if header["kind"] == "ping":
                    self.link.send({"kind": "pong"})
                    continue
                reply, outputs = self.tick(header, iter(tensors))
                self.link.send(reply, outputs)

    def _here(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.model.device)

    def tick(self, h: dict, tensors) -> tuple[dict, list[torch.Tensor]]:
        for job_id in h["drop_jobs"]:
            self.jobs.pop(job_id, None)
        for text in h["drop_texts"]:
            self.texts.pop(text, None)
        for text in h["texts"]:
            self.texts[text] = TextEmbedding(self._here(next(tensors)), self._here(next(tensors)))
        for j in h["jobs"]:
            img_ids = self._here(next(tensors))
            cond = self._here(next(tensors)) if j["has_cond"] else None
            self.jobs[j["job"]] = RowSource(j["job"], self.texts[j["prompt"]], self.texts[j["negative"]], img_ids,
                                            StepCache(PRESETS[j["speed"]].cache, j["total"]), cond)
        for job_id, step, t in h["latents"]:
            s = self.jobs[job_id]
            s.latents, s.step, s.t = self._here(next(tensors)), step, t
        wire_dtype = getattr(torch, h["wire_dtype"])
        replies, outputs = [], []
        demand = frozenset(key for key, _ in h["chunks"])
        for key, rows in h["chunks"]:
            chunk = [(self.jobs[job_id], Branch(branch)) for job_id, branch in rows]
            ran: list = []
            for s, _ in chunk:
                s.compute = Blocks(ran)
            try:
                out = self.engine._expert_forward(self.model.get(key, demand), key, chunk)
            except Exception as exc:
                replies.append({"ok": False, "error": str(exc), "code": failure_code(exc, "denoise_failed")})
                if isinstance(exc, torch.OutOfMemoryError):
                    gc.collect()
                    torch.cuda.empty_cache()
                continue
            # exact: the expert's output is in its dtype; _expert_forward only widened it
            outputs.append(out.to(wire_dtype))
            replies.append({"ok": True, "ran": ran})
        for job_id, step, _ in h["latents"]:
            self.jobs[job_id].step_cache.end_step(step)  # as the engine does once a step is done
        stats = self.model.residency.stats
        return {"kind": "done", "chunks": replies, "bytes_streamed": stats.bytes_streamed}, outputs
