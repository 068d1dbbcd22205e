"""The step-level engine: continuous batching of many generations, grouped by expert.

Every tick advances each active request by one denoising step:
  1. new requests are encoded together (T5, CLIP; i2v: VAE first frame and DINOv2), once;
  2. the router runs once over every active request that needs it;
  3. the scheduler plans the tick (pipeline/scheduler.py: which requests advance when the experts
     they need do not all fit in the device budget, the expert order, what to prefetch);
  4. each planned expert runs one forward over all rows routed to it (guidance branches and
     requests at different timesteps share that forward);
  5. per request: guidance combination per expert, weighted sum over experts, Euler step;
  6. finished requests are decoded together and handed back.
Requests join and leave between ticks. Every request the engine takes leaves it with a
`Finished` or a `Failed` event (or by `cancel`); a failure fails the requests it touched.
"""

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
from .results import Event, Failed, Finished, GenerationResult, Progress, ResidencyDelta
from .routing import policy_for
from .sampling import Branch, Guidance
from .scheduler import ExpertScheduler, RequestNeeds, TickPlan

# Used every tick or two beside the experts (routing, decoding): planned in first, evicted last.
ALWAYS_NEEDED = frozenset({"router", "vae"})


@dataclass
class EngineStats:
    ticks: int = 0
    tick_seconds: float = 0.0
    forward_seconds: float = 0.0  # router + experts + encoders + VAE: the model work
    expert_forwards: int = 0
    expert_rows: int = 0


class EmbeddingCache:
    """Text embeddings of recent prompts (repeated prompts skip T5 and CLIP)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[str, TextEmbedding] = OrderedDict()

    def get(self, text: str) -> TextEmbedding | None:
        if text in self._items:
            self._items.move_to_end(text)
        return self._items.get(text)

    def put(self, text: str, value: TextEmbedding) -> None:
        self._items[text] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class Engine:
    def __init__(self, model: DDMModel, max_batch: int = 8, max_wait: int = 24):
        self.model = model
        self.max_batch = max_batch
        self.scheduler = ExpertScheduler(max_wait, always_needed=ALWAYS_NEEDED)
        self.pending: list[tuple[str, ResolvedRequest]] = []
        self.active: dict[str, RequestState] = {}
        self.cache = EmbeddingCache()
        self.stats = EngineStats()

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
                self._start_pending(events)
            if self.active:
                try:
                    self._denoise_step(events)
                except Exception as exc:  # not pinned on fewer requests below: the step fails for all
                    self._fail(list(self.active), f"denoising failed: {exc}", "denoise_failed", events)
            self._finish_done(events)
        self.stats.ticks += 1
        self.stats.tick_seconds += time.perf_counter() - start
        return events

    def _fail(self, job_ids: Iterable[str], message: str, code: str, events: list[Event]) -> None:
        """Active requests leave with a Failed event."""
        for job_id in job_ids:
            del self.active[job_id]
            events.append(Failed(job_id, message, code))

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.stats.forward_seconds += time.perf_counter() - start
        return out

    # -- new requests ----------------------------------------------------------------------
    def _start_pending(self, events: list[Event]) -> None:
        """Encode the new requests and make them active; one whose encoding fails leaves with
        Failed("encode_failed"), the others start."""
        pending, self.pending = self.pending, []
        texts = self._encode_texts(pending, events)
        started = [(j, r) for j, r in pending if j in texts]
        images = self._encode_images([(j, r) for j, r in started if r.image is not None], events)
        for job_id, req in started:
            if req.image is not None and job_id not in images:
                continue
            try:
                self.active[job_id] = self._new_state(job_id, req, *texts[job_id], images.get(job_id))
            except Exception as exc:
                events.append(Failed(job_id, f"could not start the generation: {exc}"))

    def _prompt_text(self, req: ResolvedRequest) -> str:
        """The text T5 and CLIP read: the model's prompt template applied (here only)."""
        return self.model.manifest.sampling.prompt_template.format(prompt=req.prompt)

    def _encode_texts(self, pending: list[tuple[str, ResolvedRequest]],
                      events: list[Event]) -> dict[str, tuple[TextEmbedding, TextEmbedding]]:
        """Per job, the (prompt, negative prompt) embeddings. The texts not in the cache are
        encoded in one T5 and one CLIP batch; if that fails, the jobs that needed them fail."""
        wanted = {job_id: (self._prompt_text(r), r.negative_prompt) for job_id, r in pending}
        texts = {t for pair in wanted.values() for t in pair}
        found = {t: e for t in texts if (e := self.cache.get(t)) is not None}
        missing = sorted(texts - found.keys())
        if missing:
            m, comps = self.model, self.model.components
            try:
                t5 = self._timed(encode_t5, m.get("t5"), m.t5_tokenizer, missing, comps["t5"].max_length or 512)
                clip = self._timed(encode_clip, m.get("clip"), m.clip_tokenizer, missing, comps["clip"].max_length or 77)
            except Exception as exc:
                events += [Failed(j, f"could not encode the prompt: {exc}", "encode_failed")
                           for j, pair in wanted.items() if not found.keys() >= set(pair)]
            else:
                for i, text in enumerate(missing):
                    found[text] = TextEmbedding(t5[i : i + 1].to(m.device), clip[i : i + 1].to(m.device))
                    self.cache.put(text, found[text])
        return {j: (found[p], found[n]) for j, (p, n) in wanted.items() if p in found and n in found}

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
                events += [Failed(j, f"could not encode the first frame: {exc}", "encode_failed") for j, _ in group]
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
        state = RequestState(
            job_id=job_id, request=req, policy=policy_for(req, m.manifest.routing.renormalize), latents=noise,
            timesteps=sampling.timesteps(req.num_inference_steps, alpha), prompt=prompt, negative=negative,
            img_ids=image_positions(t, h, w, patch)[None].to(m.device),
            loads_at_start=(m.residency.stats.expert_loads(), m.residency.stats.bytes_to_device),
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
        guidance = {s.job_id: self._guidance(s) for s in states}
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
            self._fail([s.job_id for s in routed], f"routing failed: {exc}", "denoise_failed", events)
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

    def _guidance(self, s: RequestState) -> Guidance:
        """This step's guidance: off on the odd steps of guidance oscillation; i2v image guidance
        ramps over the latent frames."""
        if sampling.oscillation_off(s.step, s.request.guidance_oscillation):
            return Guidance(1.0)
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
        outputs = {}
        demand = set(plan.demand)
        for key in plan.expert_order:
            rows = [(s, b) for s in states if key in needs[s.job_id] for b in guidance[s.job_id].branches]
            try:
                expert = self.model.get(key, demand)
                if key in plan.prefetch:
                    self.model.residency.prefetch(plan.prefetch[key], protect=demand)
                for group in _group_by(rows, lambda r: (r[0].img_ids.shape[1], r[0].prompt.tokens.shape[1])):
                    out = self._timed(self._expert_forward, expert, group)
                    for i, (s, b) in enumerate(group):
                        outputs[s.job_id, key, b] = out[i : i + 1]
            except Exception as exc:
                failed = {s.job_id for s, _ in rows}
                self._fail(failed, f"{key} failed: {exc}", "denoise_failed", events)
                states = [s for s in states if s.job_id not in failed]
            demand.discard(key)
        return outputs

    def _expert_forward(self, expert, rows: list[tuple[RequestState, Branch]]) -> torch.Tensor:
        dtype, config = expert.dtype, expert.config
        img = torch.cat([pack(s.latents, config.patch_size) for s, _ in rows]).to(dtype)
        texts = [s.prompt if b is Branch.COND else s.negative for s, b in rows]
        txt = torch.cat([e.tokens for e in texts]).to(dtype)
        vec = torch.cat([e.pooled for e in texts]).to(dtype)
        cond = torch.cat([self._image_cond(s, b) for s, b in rows]).to(dtype) if config.cond_embed else None
        img_ids = torch.cat([s.img_ids for s, _ in rows])
        txt_ids = torch.zeros(len(rows), txt.shape[1], 3, device=img.device)
        timesteps = torch.tensor([s.t for s, _ in rows], device=img.device, dtype=torch.float32)
        self.stats.expert_forwards += 1
        self.stats.expert_rows += len(rows)
        return expert(img, img_ids, txt, txt_ids, timesteps, vec, cond).float()

    def _image_cond(self, s: RequestState, branch: Branch) -> torch.Tensor:
        """The expert's condition input: the first frame (i2v, except in the branch that drops
        it), else zeros."""
        if s.first_frame_cond is not None and branch is not Branch.UNCOND_ALL:
            return s.first_frame_cond
        config = self.model.expert_config
        return torch.zeros(1, s.img_ids.shape[1], config.in_channels + config.patch_size**2, device=s.latents.device)

    # -- finished requests -----------------------------------------------------------------
    def _finish_done(self, events: list[Event]) -> None:
        done = [s for s in self.active.values() if s.done]
        for group in _group_by(done, lambda s: tuple(s.latents.shape)):
            latents = []
            for s in group:
                x = s.latents.clone()
                if s.first_frame_latent is not None:
                    x[:, :, :1] = s.first_frame_latent  # i2v: the given first frame replaces latent frame 0
                latents.append(x)
            try:
                videos = self._timed(vae_decode, self.model.get("vae"), torch.cat(latents))
            except Exception as exc:
                self._fail([s.job_id for s in group], f"decoding failed: {exc}", "decode_failed", events)
                continue
            stats = self.model.residency.stats
            for i, s in enumerate(group):
                del self.active[s.job_id]
                moved = ResidencyDelta(expert_loads=stats.expert_loads() - s.loads_at_start[0],
                                       bytes_to_device=stats.bytes_to_device - s.loads_at_start[1],
                                       max_waited_ticks=s.max_waited)
                result = GenerationResult(videos[i][: s.request.num_frames], s.request, s.trace,
                                          s.trace.summary(self.model.num_experts), moved)
                events.append(Finished(s.job_id, result))


def _group_by(items, key) -> list[list]:
    groups: dict = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return list(groups.values())
