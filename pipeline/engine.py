"""The step-level engine: continuous batching of many generations, grouped by expert.

Every tick advances each active request by one denoising step:
  1. new requests are encoded together (T5, CLIP; i2v: VAE first frame and DINOv2), once;
  2. the router runs once over every active request that needs it;
  3. the scheduler plans the tick (pipeline/scheduler.py: which requests advance when the experts
     they need do not all fit in the device budget, the expert order, what to prefetch);
  4. each planned expert runs one forward over all rows routed to it (guidance branches and
     requests at different timesteps share that forward);
  5. per request: guidance combination per expert, weighted sum over experts, Euler step;
  6. finished requests are decoded, as many at once as the memory plan allows, and handed back.
Requests join and leave between ticks. Every request the engine takes leaves it with a
`Finished` or a `Failed` event (or by `cancel`); a failure fails the requests it touched, with
a code naming the stage (`encode_failed`, `denoise_failed`, `decode_failed`), or
`out_of_memory` when the device ran out, after which the engine frees what it can.

Memory (`MemoryLimits`, from the worker's plan: pipeline/planner): an expert forward runs at
most `rows_per_forward` rows (a larger group is split; each row's output is the same), at most
`decodes_at_once` videos decode together, the text embedding cache holds at most `cache_bytes`,
and the components the plan keeps on the host leave the device after encoding.
"""

import gc
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Iterable

import torch

from . import sampling
from .encoders import encode_clip, encode_dinov2, encode_t5, fit_image, vae_decode, vae_encode_frame
from .loader import DDMModel
from .manifest import expert_key
from .models.expert import image_positions, pack, unpack
from .request import ResolvedRequest
from .request_state import RequestState, TextEmbedding
from .results import Event, Failed, Finished, GenerationResult, Progress, ResidencyDelta, WeightTraffic
from .routing import FullEnsemble, TopK, policy_for
from .sampling import Branch, Guidance
from .scheduler import ExpertScheduler, RequestNeeds, TickPlan
from .speed import PRESETS, CachePolicy
from .step_cache import CacheRow, StepCache, cached_forward

# Used every tick or two beside the experts (routing, decoding): planned in first, evicted last.
ALWAYS_NEEDED = frozenset({"router", "vae"})
OUT_OF_MEMORY = "out_of_memory"
CACHE_ENTRIES = 256  # texts the embedding cache keeps unless a memory plan says fewer


@dataclass(frozen=True)
class MemoryLimits:
    """What the memory plan lets one tick hold at once; None: no limit."""

    rows_per_forward: int | None = None
    decodes_at_once: int | None = None
    cache_entries: int = CACHE_ENTRIES
    cache_bytes: int | None = None
    on_demand: frozenset[str] = frozenset()  # encoders that leave the device once their phase is done
    step_cache_rows: int | None = None  # rows that may hold step-cache entries at once (pipeline/step_cache.py)


# How CUDA libraries report a failed allocation without torch.OutOfMemoryError: cuBLAS and cuDNN
# handles and workspaces, cuDNN finding no algorithm whose workspace fits (a Conv3d's usual
# out-of-memory), and a raw "out of memory" from the runtime or driver (torch.AcceleratorError).
OUT_OF_MEMORY_MESSAGES = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                          "Unable to find a valid cuDNN algorithm", "error: out of memory")


def failure_code(exc: BaseException, stage_code: str) -> str:
    if isinstance(exc, torch.OutOfMemoryError) or (
            isinstance(exc, RuntimeError) and any(m in str(exc) for m in OUT_OF_MEMORY_MESSAGES)):
        return OUT_OF_MEMORY
    return stage_code


def _chunks(items: list, size: int | None) -> list[list]:
    if size is None:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class EngineStats:
    ticks: int = 0
    tick_seconds: float = 0.0
    forward_seconds: float = 0.0  # router + experts + encoders + VAE: the model work
    expert_forwards: int = 0
    expert_rows: int = 0


class EmbeddingCache:
    """Text embeddings of recent prompts (repeated prompts skip T5 and CLIP), the least recently
    used leaving first beyond `size` entries or `max_bytes`."""

    def __init__(self, size: int = CACHE_ENTRIES, max_bytes: int | None = None):
        self.size = size
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, TextEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> TextEmbedding | None:
        if text in self._items:
            self._items.move_to_end(text)
        return self._items.get(text)

    def put(self, text: str, value: TextEmbedding) -> None:
        self._drop(text)
        self._items[text] = value
        self.nbytes += _embedding_bytes(value)
        while len(self._items) > self.size or (self.max_bytes is not None and self.nbytes > self.max_bytes):
            self._drop(next(iter(self._items)))

    def _drop(self, text: str) -> None:
        if text in self._items:
            self.nbytes -= _embedding_bytes(self._items.pop(text))


def _embedding_bytes(e: TextEmbedding) -> int:
    return e.tokens.untyped_storage().nbytes() + e.pooled.untyped_storage().nbytes()


class Engine:
    def __init__(self, model: DDMModel, max_batch: int = 8, max_wait: int = 24, limits: MemoryLimits = MemoryLimits(),
                 stream_batch: int = 1, expert_runner=None):
        self.model = model
        # None: every expert runs here. A worker group's runner (pipeline/distributed) sends each
        # expert's rows to the ranks that hold it instead (`run(engine, plan, work, events)`).
        self.expert_runner = expert_runner
        self.max_batch = max_batch
        self.limits = limits
        self.scheduler = ExpertScheduler(max_wait, always_needed=ALWAYS_NEEDED & model.components.keys(),
                                         stream_batch=stream_batch)
        self.pending: list[tuple[str, ResolvedRequest]] = []
        self.active: dict[str, RequestState] = {}
        self.cache = EmbeddingCache(limits.cache_entries, limits.cache_bytes)
        self.stats = EngineStats()
        self._out_of_memory = False  # set by a failure; memory is released at the end of the tick

    # -- admission -------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self.pending) - len(self.active)

    @property
    def has_work(self) -> bool:
        return bool(self.pending or self.active)

    def admit(self, job_id: str, request: ResolvedRequest) -> None:
        """Queue a resolved request; it starts at the next tick."""
        if self.free_slots <= 0:
            raise RuntimeError("engine is full")
        self.pending.append((job_id, request))

    @property
    def job_ids(self) -> set[str]:
        """Every request the engine holds (pending or active)."""
        return {job_id for job_id, _ in self.pending} | self.active.keys()

    @property
    def weight_traffic(self) -> WeightTraffic:
        """What the engine hands back beside its events: the weights moved since it started
        (a copy of the residency's running totals; each result carries its own ResidencyDelta)."""
        stats = self.model.residency.stats
        return WeightTraffic(dict(stats.device_loads), stats.bytes_to_device, stats.bytes_from_disk,
                             stats.bytes_streamed)

    def cancel(self, job_id: str) -> bool:
        before = len(self.pending) + len(self.active)
        self.pending = [(j, r) for j, r in self.pending if j != job_id]
        self.active.pop(job_id, None)
        return len(self.pending) + len(self.active) < before

    # -- the tick --------------------------------------------------------------------------
    def tick(self) -> list[Event]:
        start = time.perf_counter()
        events: list[Event] = []
        with torch.inference_mode():
            if self.pending:
                pending, self.pending = self.pending, []
                try:
                    self._start_pending(pending, events)
                except Exception as exc:  # not pinned on fewer requests inside: those not started fail
                    failed = {e.job_id for e in events if isinstance(e, Failed)}
                    events += [self._failed(j, f"could not start the generation: {exc}", exc, "encode_failed")
                               for j, _ in pending if j not in self.active and j not in failed]
            if self.active:
                try:
                    self._denoise_step(events)
                except Exception as exc:  # not pinned on fewer requests below: the step fails for all
                    self._fail(list(self.active), f"denoising failed: {exc}", failure_code(exc, "denoise_failed"), events)
            self._finish_done(events)
        if self._out_of_memory:  # after the failed tensors' frames are gone
            self._release_memory()
        self.stats.ticks += 1
        self.stats.tick_seconds += time.perf_counter() - start
        return events

    def _fail(self, job_ids: Iterable[str], message: str, code: str, events: list[Event]) -> None:
        """Active requests leave with a Failed event."""
        for job_id in job_ids:
            del self.active[job_id]
            events.append(Failed(job_id, message, code))
        self._out_of_memory |= code == OUT_OF_MEMORY

    def _failed(self, job_id: str, message: str, exc: BaseException, stage_code: str) -> Failed:
        """The Failed event of a request that was not active yet."""
        code = failure_code(exc, stage_code)
        self._out_of_memory |= code == OUT_OF_MEMORY
        return Failed(job_id, message, code)

    def _release_memory(self) -> None:
        """After an out-of-memory failure: drop what the failed requests held, and give the
        allocator's cached blocks back to the device."""
        self._out_of_memory = False
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.stats.forward_seconds += time.perf_counter() - start
        return out

    # -- new requests ----------------------------------------------------------------------
    def _start_pending(self, pending: list[tuple[str, ResolvedRequest]], events: list[Event]) -> None:
        """Encode the new requests and make them active; one whose encoding fails leaves with
        Failed("encode_failed"), the others start. Encoders the plan keeps on the host leave
        the device afterwards."""
        texts = self._encode_texts(pending, events)
        started = [(j, r) for j, r in pending if j in texts]
        images = self._encode_images([(j, r) for j, r in started if r.image is not None], events)
        for name in self.limits.on_demand & self.model.components.keys():
            self.model.residency.evict(name)
        for job_id, req in started:
            if req.image is not None and job_id not in images:
                continue
            try:
                self.active[job_id] = self._new_state(job_id, req, *texts[job_id], images.get(job_id))
            except Exception as exc:
                events.append(self._failed(job_id, f"could not start the generation: {exc}", exc, "generation_failed"))

    def _prompt_text(self, req: ResolvedRequest) -> str:
        """The text T5 and CLIP read: the model's prompt template applied (here only)."""
        return self.model.manifest.sampling.prompt_template.format(prompt=req.prompt)

    def _encode_texts(self, pending: list[tuple[str, ResolvedRequest]],
                      events: list[Event]) -> dict[str, tuple[TextEmbedding, TextEmbedding]]:
        """Per job, the (prompt, negative prompt) embeddings. The texts not in the cache are
        encoded in one T5 and one CLIP batch; if that fails, each is encoded alone, so a text the
        encoders cannot take (a lone surrogate, say) fails only the jobs that carry it."""
        wanted = {job_id: (self._prompt_text(r), r.negative_prompt) for job_id, r in pending}
        texts = {t for pair in wanted.values() for t in pair}
        found = {t: e for t in texts if (e := self.cache.get(t)) is not None}
        missing = sorted(texts - found.keys())
        errors: dict[str, Exception] = {}
        try:
            found.update(self._encode_batch(missing))
        except Exception as exc:
            if len(missing) == 1:
                errors[missing[0]] = exc
            else:
                for text in missing:
                    try:
                        found.update(self._encode_batch([text]))
                    except Exception as alone:
                        errors[text] = alone
        for job_id, pair in wanted.items():
            bad = [errors[t] for t in pair if t in errors]
            if bad:
                events.append(self._failed(job_id, f"could not encode the prompt: {bad[0]}", bad[0], "encode_failed"))
        return {j: (found[p], found[n]) for j, (p, n) in wanted.items() if p in found and n in found}

    def _encode_batch(self, texts: list[str]) -> dict[str, TextEmbedding]:
        """T5 and CLIP embeddings of `texts` in one batch each, put in the cache."""
        if not texts:
            return {}
        m, comps = self.model, self.model.components
        t5 = self._timed(encode_t5, m.get("t5"), m.t5_tokenizer, texts, comps["t5"].max_length or 512)
        clip = self._timed(encode_clip, m.get("clip"), m.clip_tokenizer, texts, comps["clip"].max_length or 77)
        out = {}
        for i, text in enumerate(texts):  # each its own tensors: a cached row keeps no batch alive
            out[text] = TextEmbedding(t5[i : i + 1].clone().to(m.device), clip[i : i + 1].clone().to(m.device))
            self.cache.put(text, out[text])
        return out

    def _encode_images(self, items: list[tuple[str, ResolvedRequest]],
                       events: list[Event]) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """First frames -> (reference latent, DINOv2 feature), batched by size; a batch that fails
        fails its jobs."""
        out = {}
        for group in _group_by(items, lambda item: (item[1].width, item[1].height)):
            try:
                frames = [fit_image(req.image, req.width, req.height) for _, req in group]
                latents = self._timed(vae_encode_frame, self.model.get("vae"), frames)
                features = None
                if "dinov2" in self.model.components:
                    features = self._timed(encode_dinov2, self.model.get("dinov2"), self.model.image_processor, frames)
            except Exception as exc:
                events += [self._failed(j, f"could not encode the first frame: {exc}", exc, "encode_failed")
                           for j, _ in group]
                continue
            for i, (job_id, _) in enumerate(group):
                out[job_id] = (latents[i : i + 1], None if features is None else features[i : i + 1])
        return out

    def _new_state(self, job_id: str, req: ResolvedRequest, prompt: TextEmbedding, negative: TextEmbedding,
                   image: tuple[torch.Tensor, torch.Tensor | None] | None) -> RequestState:
        m = self.model
        t = sampling.latent_frames(req.num_frames, m.temporal_compression)
        h, w = req.height // m.spatial_compression, req.width // m.spatial_compression
        generator = torch.Generator().manual_seed(req.seed)
        noise = torch.randn((1, m.latent_channels, t, h, w), generator=generator, dtype=torch.float32).to(m.device)
        patch = m.expert_config.patch_size
        alpha = sampling.resolution_shift((h // patch) * (w // patch), t)
        policy = policy_for(req, m.manifest.routing.renormalize)
        held = sum(s.step_cache.rows for s in self.active.values())
        state = RequestState(
            job_id=job_id, request=req, policy=policy, latents=noise,
            timesteps=sampling.timesteps(req.num_inference_steps, alpha), prompt=prompt, negative=negative,
            img_ids=image_positions(t, h, w, patch)[None].to(m.device),
            loads_at_start=(m.residency.stats.expert_loads(), m.residency.stats.bytes_to_device),
            step_cache=step_cache_for(req, policy, m.num_experts, self.limits.step_cache_rows, held),
        )
        if image is not None:
            ref, feature = image
            cond = torch.zeros((1, m.latent_channels + 1, t, h, w), device=m.device)
            cond[:, 0, 0] = 1.0  # mask: latent frame 0 is given
            cond[:, 1:, 0] = ref[:, :, 0]
            state.first_frame_cond, state.first_frame_latent, state.image_feature = pack(cond, patch), ref, feature
        return state

    # -- one denoising step for every active request ----------------------------------------
    def _denoise_step(self, events: list[Event]) -> None:
        """Route, plan, run the planned experts; then per request that advances: guidance per
        expert, weighted sum over the experts, Euler step."""
        self._route(list(self.active.values()), events)
        active = list(self.active.values())
        needs = {s.job_id: s.expert_keys() for s in active}
        plan = self.scheduler.schedule([RequestNeeds(s.job_id, needs[s.job_id], s.waited) for s in active],
                                       self.model.residency)
        for s in active:
            s.waited = 0 if s.job_id in plan.advance else s.waited + 1
            s.max_waited = max(s.max_waited, s.waited)
        states = [s for s in active if s.job_id in plan.advance]
        guidance = {}
        blocks = self.model.expert_config.depth + self.model.expert_config.depth_single_blocks
        for s in states:
            asked = self._guidance(s)
            guidance[s.job_id] = asked if self._unconditional_runs(s) else Guidance(1.0)
            left_out = len(asked.branches) - len(guidance[s.job_id].branches)
            s.compute.skipped_rows(left_out * len(s.choice.experts), blocks)
        outputs = self._run_experts(plan, states, needs, guidance, events)
        patch = self.model.expert_config.patch_size
        for s in states:
            if s.job_id not in self.active:  # an expert it needed failed
                continue
            g = guidance[s.job_id]
            _, _, t, h, w = s.latents.shape
            velocity = torch.zeros_like(s.latents)
            for e, weight in zip(s.choice.experts, s.choice.weights):
                out = {b: unpack(outputs[s.job_id, expert_key(e), b], t, h, w, patch) for b in g.branches}
                velocity = velocity + weight * g.combine(out)
            s.latents = sampling.euler_step(s.latents, velocity, s.t, s.t_next)
            s.step_cache.end_step(s.step)
            s.step += 1
            events.append(Progress(s.job_id, s.step, s.total, s.choice.experts, s.choice.weights))
            s.choice = None

    def _route(self, states: list[RequestState], events: list[Event]) -> None:
        """Choose this step's experts for every request that has no choice yet; if the router
        fails, the requests that needed it fail."""
        states = [s for s in states if s.choice is None]
        routed = [s for s in states if s.policy.needs_router]
        logits = {}
        try:
            if routed:
                logits = self._router_logits(routed)
        except Exception as exc:
            self._fail([s.job_id for s in routed], f"routing failed: {exc}", failure_code(exc, "denoise_failed"), events)
            states = [s for s in states if not s.policy.needs_router]
        for s in states:
            s.choice = s.policy.choose(s.step, logits.get(s.job_id))
            s.trace.record(s.step, s.t, s.choice)

    def _router_logits(self, states: list[RequestState]) -> dict[str, torch.Tensor]:
        router = self.model.get("router")
        dtype = next(router.parameters()).dtype
        device = self.model.device
        logits = {}
        for group in _group_by(states, lambda s: tuple(s.latents.shape)):
            has_image = torch.tensor([s.image_feature is not None for s in group], device=device)
            features = None
            if has_image.any():
                dim = router.config.image_feature_dim
                features = torch.cat([s.image_feature if s.image_feature is not None else torch.zeros(1, dim, device=device)
                                      for s in group]).to(dtype)
            out = self._timed(
                router, torch.cat([s.latents for s in group]).to(dtype),
                torch.tensor([s.t for s in group], device=device, dtype=dtype),
                torch.cat([s.prompt.pooled for s in group]).to(dtype), features, has_image,
            )
            logits.update({s.job_id: out[i].float() for i, s in enumerate(group)})
        return logits

    @staticmethod
    def _unconditional_runs(s: RequestState) -> bool:
        """Whether this step runs the unconditional branches: not on the odd steps of guidance
        oscillation, not outside the guidance interval."""
        return (not sampling.oscillation_off(s.step, s.request.guidance_oscillation)
                and sampling.in_guidance_interval(s.t, s.request.guidance_interval))

    def _guidance(self, s: RequestState) -> Guidance:
        """The guidance the request asks for at this step; i2v image guidance ramps over the
        latent frames."""
        image_scale = None
        if s.first_frame_cond is not None:
            ramp = sampling.image_guidance_ramp(s.request.image_guidance_scale, s.step, s.total, s.latents.shape[2])
            if not torch.all(ramp == 1.0):
                image_scale = ramp.float().to(s.latents.device).view(1, 1, -1, 1, 1)
        return Guidance(s.request.guidance_scale, image_scale)

    def _run_experts(self, plan: TickPlan, states: list[RequestState], needs: dict[str, frozenset[str]],
                     guidance: dict[str, Guidance], events: list[Event]) -> dict[tuple[str, str, Branch], torch.Tensor]:
        """Every planned expert's batched forwards: (job, expert key, branch) -> packed output.
        If an expert fails to load or run, the requests routed to it fail."""
        work = {key: [(s, b) for s in states if key in needs[s.job_id] for b in guidance[s.job_id].branches]
                for key in plan.expert_order}
        if self.expert_runner is not None:
            return self.expert_runner.run(self, plan, work, events)
        outputs = {}
        demand = set(plan.demand)
        for key, rows in work.items():
            rows = [(s, b) for s, b in rows if s.job_id in self.active]  # not those an earlier expert failed
            try:
                expert = self.model.get(key, demand)
                if key in plan.prefetch:
                    self.model.residency.prefetch(plan.prefetch[key], protect=demand)
                for chunk in self.forward_chunks(rows):
                    out = self._timed(self._expert_forward, expert, key, chunk)
                    for i, (s, b) in enumerate(chunk):
                        outputs[s.job_id, key, b] = out[i : i + 1]
            except Exception as exc:
                failed = {s.job_id for s, _ in rows}
                self._fail(failed, f"{key} failed: {exc}", failure_code(exc, "denoise_failed"), events)
            demand.discard(key)
        return outputs

    def forward_chunks(self, rows: list[tuple[RequestState, Branch]]) -> list[list[tuple[RequestState, Branch]]]:
        """One expert's rows as its forwards take them: same token counts together, at most
        `rows_per_forward` at a time."""
        groups = _group_by(rows, lambda r: (r[0].img_ids.shape[1], r[0].prompt.tokens.shape[1]))
        return [chunk for group in groups for chunk in _chunks(group, self.limits.rows_per_forward)]

    def _expert_forward(self, expert, key: str, rows: list[tuple[RequestState, Branch]]) -> torch.Tensor:
        self.stats.expert_forwards += 1
        self.stats.expert_rows += len(rows)
        out, blocks = forward_rows(expert, key, rows)
        for (s, _), ran in zip(rows, blocks):
            s.compute.ran_row(ran, expert.num_blocks)
        return out

    # -- finished requests -----------------------------------------------------------------
    def _finish_done(self, events: list[Event]) -> None:
        """Decode finished requests, same-shape ones together up to the plan's count."""
        done = [s for s in self.active.values() if s.done]
        shapes = _group_by(done, lambda s: tuple(s.latents.shape))
        for group in [chunk for same in shapes for chunk in _chunks(same, self.limits.decodes_at_once)]:
            latents = []
            for s in group:
                x = s.latents.clone()
                if s.first_frame_latent is not None:
                    x[:, :, :1] = s.first_frame_latent  # i2v: the given first frame replaces latent frame 0
                latents.append(x)
            try:
                videos = self._timed(vae_decode, self.model.get("vae"), torch.cat(latents))
            except Exception as exc:
                self._fail([s.job_id for s in group], f"decoding failed: {exc}", failure_code(exc, "decode_failed"), events)
                continue
            stats = self.model.residency.stats
            for i, s in enumerate(group):
                del self.active[s.job_id]
                moved = ResidencyDelta(expert_loads=stats.expert_loads() - s.loads_at_start[0],
                                       bytes_to_device=stats.bytes_to_device - s.loads_at_start[1],
                                       max_waited_ticks=s.max_waited)
                result = GenerationResult(videos[i][: s.request.num_frames], s.request, s.trace,
                                          s.trace.summary(self.model.num_experts), moved, s.compute)
                events.append(Finished(s.job_id, result))


def step_cache_for(req: ResolvedRequest, routing, num_experts: int, limit: int | None, held: int) -> StepCache:
    """The request's step cache: its preset's, while its rows (guidance branches x experts a
    step) fit the plan's `limit` beside the `held` rows of the active requests; else none, and
    the request computes every block (the quality preset's output)."""
    policy = PRESETS[req.speed].cache
    experts = routing.k if isinstance(routing, TopK) else num_experts if isinstance(routing, FullEnsemble) else 1
    rows = (3 if req.has_image else 2) * experts if policy.enabled else 0
    if limit is not None and held + rows > limit:
        policy, rows = CachePolicy(), 0
    return StepCache(policy, req.num_inference_steps, rows)


def expert_inputs(expert, rows: list[tuple[RequestState, Branch]]) -> tuple:
    """MMDiT.forward's arguments for a batch of rows (request, guidance branch): latents, text,
    image condition and timesteps in the expert's dtype (Open-Sora v2 builds its timesteps in
    the latents' dtype, bf16 for the released weights; the router gets the same rounding)."""
    dtype, config = expert.dtype, expert.config
    img = torch.cat([pack(s.latents, config.patch_size) for s, _ in rows]).to(dtype)
    texts = [s.prompt if b is Branch.COND else s.negative for s, b in rows]
    txt = torch.cat([e.tokens for e in texts]).to(dtype)
    vec = torch.cat([e.pooled for e in texts]).to(dtype)
    cond = torch.cat([image_cond(s, b, config) for s, b in rows]).to(dtype) if config.cond_embed else None
    img_ids = torch.cat([s.img_ids for s, _ in rows])
    txt_ids = torch.zeros(len(rows), txt.shape[1], 3, device=img.device)
    timesteps = torch.tensor([s.t for s, _ in rows], device=img.device, dtype=dtype)
    return img, img_ids, txt, txt_ids, timesteps, vec, cond


def forward_rows(expert, key: str, rows: list[tuple[RequestState, Branch]], decide=None) -> tuple[torch.Tensor, list[int]]:
    """One expert forward over `rows` as the engine runs it: the fp32 output and the blocks each
    row ran (step-cached rows may run none). `decide` overrides the step cache's per-row choice
    (the planner's meta-device measurements, where tensors have no values)."""
    inputs = expert_inputs(expert, rows)
    cache_rows = [CacheRow(s.step_cache, key, b, s.step) for s, b in rows]
    if any(r.cache.policy.enabled for r in cache_rows):
        out, blocks = cached_forward(expert, inputs, cache_rows, decide)
    else:  # the plain forward: every row runs every block
        out, blocks = expert(*inputs), [expert.num_blocks] * len(rows)
    return out.float(), blocks


def image_cond(s: RequestState, branch: Branch, config) -> torch.Tensor:
    """The expert's condition input: the first frame (i2v, except in the branch that drops it),
    else zeros."""
    if s.first_frame_cond is not None and branch is not Branch.UNCOND_ALL:
        return s.first_frame_cond
    return torch.zeros(1, s.img_ids.shape[1], config.in_channels + config.patch_size**2, device=s.latents.device)


def _group_by(items, key) -> list[list]:
    groups: dict = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return list(groups.values())
