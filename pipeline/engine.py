"""The step-level engine: continuous batching of many generations, grouped by expert.

Every tick advances each active request by one denoising step:
  1. new requests are encoded together (T5, CLIP; i2v: VAE first frame and DINOv2), once;
  2. the router runs once over every active request that needs it;
  3. (request, expert) pairs are grouped by expert, and each expert runs one forward over all
     rows routed to it (CFG branches and requests at different timesteps share that forward);
  4. per request: guidance combination per expert, weighted sum over experts, Euler step;
  5. finished requests are decoded together and handed back.
Requests join and leave between ticks.

Scheduling. When every expert the active requests need fits in the device budget, each active
request advances exactly one step per tick. When they do not fit (say a budget of one expert and
requests routed to three), the tick serves a set of experts that fits, resident ones first and
then the most demanded, and only the requests whose chosen experts are all in that set advance;
the others keep their routing choice and wait. Fairness bound: a request that has waited
`max_wait` ticks in a row is served first at the next tick (most-waited first), so no request
waits more than `max_wait + max_batch - 1` consecutive ticks.
"""

import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field

import torch

from . import sampling
from .encoders import encode_clip, encode_dinov2, encode_t5, fit_image, vae_decode, vae_encode_frame
from .loader import DDMModel
from .models.expert import image_positions, pack, unpack
from .request import ResolvedRequest, RoutingMode
from .results import Failed, Finished, GenerationResult, Progress, ResidencyDelta
from .routing import Choice, ExpertSchedule, FixedExpert, FullEnsemble, RoutingTrace, TopK


@dataclass
class EngineStats:
    ticks: int = 0
    tick_seconds: float = 0.0
    forward_seconds: float = 0.0  # router + experts + encoders + VAE: the model work
    expert_forwards: int = 0
    expert_rows: int = 0

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass(eq=False)  # compared by identity: it holds tensors
class _State:
    job_id: str
    req: ResolvedRequest
    policy: object
    x: torch.Tensor  # (1, C, T, h, w) float32
    ts: list[float]
    txt: dict[str, torch.Tensor]  # "cond" / "null" -> (1, L, D)
    vec: dict[str, torch.Tensor]  # "cond" / "null" -> (1, V)
    img_ids: torch.Tensor  # (1, N, 3)
    cond: torch.Tensor | None = None  # packed i2v condition (1, N, 68); None for t2v
    image_feature: torch.Tensor | None = None
    ref_latent: torch.Tensor | None = None
    step: int = 0
    trace: RoutingTrace = field(default_factory=RoutingTrace)
    choice: Choice | None = None  # this step's experts, kept while the request waits
    waited: int = 0  # consecutive ticks without a step
    max_waited: int = 0
    loads_at_start: tuple[int, int] = (0, 0)

    @property
    def total(self) -> int:
        return self.req.num_inference_steps

    @property
    def t(self) -> float:
        return self.ts[self.step]


HOT = frozenset({"router", "vae"})  # needed every tick or two beside the experts: evicted last


def make_policy(req: ResolvedRequest, renormalize: bool):
    if req.routing is RoutingMode.FIXED:
        return FixedExpert(req.expert)
    if req.routing is RoutingMode.SCHEDULE:
        return ExpertSchedule(req.expert_schedule)
    if req.routing is RoutingMode.ENSEMBLE:
        return FullEnsemble()
    return TopK(req.top_k, renormalize)


class EmbeddingCache:
    """Text embeddings of recent prompts (repeated prompts skip T5 and CLIP)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def get(self, text: str):
        if text in self._items:
            self._items.move_to_end(text)
        return self._items.get(text)

    def put(self, text: str, value) -> None:
        self._items[text] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class Engine:
    def __init__(self, model: DDMModel, max_batch: int = 8, max_wait: int = 24):
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.pending: list[tuple[str, ResolvedRequest]] = []
        self.active: dict[str, _State] = {}
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
    def tick(self) -> list:
        start = time.perf_counter()
        events: list = []
        with torch.inference_mode():
            if self.pending:
                self._start_pending(events)
            if self.active:
                try:
                    self._denoise_step(events)
                except Exception as exc:  # a failed forward fails the requests in it, not the worker
                    events += [Failed(j, f"denoising failed: {exc}") for j in self.active]
                    self.active.clear()
            self._finish_done(events)
        self.stats.ticks += 1
        self.stats.tick_seconds += time.perf_counter() - start
        return events

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.stats.forward_seconds += time.perf_counter() - start
        return out

    def _encode_texts(self, texts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """T5 and CLIP embeddings of every text, encoding the uncached ones in one batch each."""
        missing = sorted({t for t in texts if self.cache.get(t) is None})
        if missing:
            m, comps = self.model, self.model.components
            t5 = self._timed(encode_t5, m.get("t5"), m.t5_tokenizer, missing, comps["t5"].max_length or 512)
            clip = self._timed(encode_clip, m.get("clip"), m.clip_tokenizer, missing, comps["clip"].max_length or 77)
            for i, text in enumerate(missing):
                self.cache.put(text, (t5[i : i + 1].to(m.device), clip[i : i + 1].to(m.device)))
        return {t: self.cache.get(t) for t in texts}

    def _prompt_text(self, req: ResolvedRequest) -> str:
        """The text T5 and CLIP read: the model's prompt template applied (here only)."""
        return self.model.manifest.sampling.prompt_template.format(prompt=req.prompt)

    def _start_pending(self, events: list) -> None:
        pending, self.pending = self.pending, []
        embeddings = self._encode_texts([t for _, r in pending for t in (self._prompt_text(r), r.negative_prompt)])
        images = [(j, r) for j, r in pending if r.image is not None]
        encoded_images = self._encode_images(images, events)
        for job_id, req in pending:
            if req.image is not None and job_id not in encoded_images:
                continue
            self.active[job_id] = self._new_state(job_id, req, embeddings, encoded_images.get(job_id))

    def _encode_images(self, items, events) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """First frames -> (reference latent, DINOv2 feature), batched by size."""
        out = {}
        by_size = defaultdict(list)
        for job_id, req in items:
            by_size[(req.width, req.height)].append((job_id, req))
        for (width, height), group in by_size.items():
            try:
                frames = [fit_image(req.image, width, height) for _, req in group]
                latents = self._timed(vae_encode_frame, self.model.get("vae"), frames)
                features = None
                if "dinov2" in self.model.components:
                    features = self._timed(encode_dinov2, self.model.get("dinov2"), self.model.image_processor, frames)
            except Exception as exc:
                events += [Failed(j, f"could not encode the first frame: {exc}") for j, _ in group]
                continue
            for i, (job_id, _) in enumerate(group):
                out[job_id] = (latents[i : i + 1], None if features is None else features[i : i + 1])
        return out

    def _new_state(self, job_id, req: ResolvedRequest, embeddings, image) -> _State:
        m = self.model
        t = sampling.latent_frames(req.num_frames, m.temporal_compression)
        h, w = req.height // m.spatial_compression, req.width // m.spatial_compression
        generator = torch.Generator().manual_seed(req.seed)
        noise = torch.randn((1, m.latent_channels, t, h, w), generator=generator, dtype=torch.float32).to(m.device)
        patch = m.expert_config.patch_size
        alpha = sampling.resolution_shift((h // patch) * (w // patch), t)
        state = _State(
            job_id=job_id, req=req, policy=make_policy(req, m.manifest.routing.renormalize), x=noise,
            ts=sampling.timesteps(req.num_inference_steps, alpha),
            txt={"cond": embeddings[self._prompt_text(req)][0], "null": embeddings[req.negative_prompt][0]},
            vec={"cond": embeddings[self._prompt_text(req)][1], "null": embeddings[req.negative_prompt][1]},
            img_ids=image_positions(t, h, w, patch)[None].to(m.device),
            loads_at_start=(m.residency.stats.expert_loads(), m.residency.stats.bytes_to_device),
        )
        if image is not None:
            ref, feature = image
            cond = torch.zeros((1, m.latent_channels + 1, t, h, w), device=m.device)
            cond[:, 0, 0] = 1.0  # mask: latent frame 0 is given
            cond[:, 1:, 0] = ref[:, :, 0]
            state.cond, state.ref_latent, state.image_feature = pack(cond, patch), ref, feature
        return state

    # -- one denoising step for every active request ----------------------------------------
    def _route(self, states: list[_State]) -> None:
        """Choose this step's experts for every request that has no choice yet."""
        states = [s for s in states if s.choice is None]
        routed = [s for s in states if s.policy.needs_router]
        logits = {}
        if routed:
            router = self.model.get("router")
            dtype = next(router.parameters()).dtype
            for group in _group_by(routed, lambda s: tuple(s.x.shape)):
                has_image = torch.tensor([s.image_feature is not None for s in group], device=self.model.device)
                features = None
                if has_image.any():
                    dim = router.config.image_feature_dim
                    features = torch.cat([s.image_feature if s.image_feature is not None else torch.zeros(1, dim, device=self.model.device)
                                          for s in group]).to(dtype)
                out = self._timed(
                    router, torch.cat([s.x for s in group]).to(dtype),
                    torch.tensor([s.t for s in group], device=self.model.device, dtype=dtype),
                    torch.cat([s.vec["cond"] for s in group]).to(dtype), features, has_image,
                )
                logits.update({s.job_id: out[i].float() for i, s in enumerate(group)})
        for s in states:
            s.choice = s.policy.choose(s.step, logits.get(s.job_id))
            s.trace.record(s.step, s.t, s.choice)

    def _guidance(self, s: _State) -> tuple[float, torch.Tensor | None]:
        """(text scale, per-latent-frame image scale or None) for this step."""
        if sampling.oscillation_off(s.step, s.req.guidance_oscillation):
            return 1.0, None
        image_scale = None
        if s.cond is not None:
            ramp = sampling.image_guidance_ramp(s.req.image_guidance_scale, s.step, s.total, s.x.shape[2])
            if not torch.all(ramp == 1.0):
                image_scale = ramp.float().to(s.x.device).view(1, 1, -1, 1, 1)
        return s.req.guidance_scale, image_scale

    @staticmethod
    def _branches(text_scale: float, image_scale) -> list[str]:
        """Forward branches needed: cond; uncond text (skipped at scale 1); null image (i2v only)."""
        if image_scale is not None:
            return ["cond", "null_text", "null_all"]
        return ["cond"] if text_scale == 1.0 else ["cond", "null_text"]

    def _row_inputs(self, s: _State, branch: str):
        text = "cond" if branch == "cond" else "null"
        cond = s.cond if branch != "null_all" else None
        if cond is None and self.model.expert_config.cond_embed:
            cond = torch.zeros(1, s.img_ids.shape[1], self.model.expert_config.in_channels + self.model.expert_config.patch_size**2,
                               device=s.x.device)
        return s.txt[text], s.vec[text], cond

    def _select(self, states: list[_State]) -> list[_State]:
        """The requests that advance this tick (see Scheduling in the module docstring)."""
        residency = self.model.residency
        needs = {s.job_id: {f"expert_{e}" for e in s.choice.experts} for s in states}
        if residency.fits(set().union(*needs.values()) | HOT):
            return states
        chosen: set[str] = set(HOT)
        starving = sorted((s for s in states if s.waited >= self.max_wait), key=lambda s: -s.waited)
        if starving:
            chosen |= needs[starving[0].job_id]
        demand = Counter(e for n in needs.values() for e in n)
        for e in sorted(demand, key=lambda e: (not residency.is_resident(e), -demand[e], e)):
            if e not in chosen and residency.fits(chosen | {e}):
                chosen.add(e)
        if chosen == HOT:  # one request's experts alone exceed the budget: run them one by one
            chosen = needs[max(states, key=lambda s: s.waited).job_id]
        return [s for s in states if needs[s.job_id] <= chosen]

    def _denoise_step(self, events: list) -> None:
        waiting = list(self.active.values())
        self._route(waiting)
        states = self._select(waiting)
        for s in waiting:
            s.waited = 0 if s in states else s.waited + 1
            s.max_waited = max(s.max_waited, s.waited)
        plans = {s.job_id: self._guidance(s) for s in states}
        branches = {s.job_id: self._branches(*plans[s.job_id]) for s in states}
        outputs: dict[tuple[str, int, str], torch.Tensor] = {}
        wanted = sorted({e for s in states for e in s.choice.experts})
        demand = {f"expert_{e}" for e in wanted} | HOT
        # Resident experts first, so one that must be loaded never pushes out one still needed;
        # while one computes, the next (or, last, a waiting request's) is prefetched (CUDA).
        order = sorted(wanted, key=lambda e: not self.model.residency.is_resident(f"expert_{e}"))
        later = order[1:] + sorted({e for s in waiting if s not in states for e in s.choice.experts} - set(wanted))
        for i, e in enumerate(order):
            expert = self.model.get(f"expert_{e}", demand)
            if i < len(later):
                self.model.residency.prefetch(f"expert_{later[i]}", protect=demand | {f"expert_{e}"})
            rows = [(s, b) for s in states if e in s.choice.experts for b in branches[s.job_id]]
            for group in _group_by(rows, lambda r: (r[0].img_ids.shape[1], r[0].txt["cond"].shape[1])):
                out = self._timed(self._expert_forward, expert, group)
                for i, (s, b) in enumerate(group):
                    outputs[(s.job_id, e, b)] = out[i : i + 1]
            demand.discard(f"expert_{e}")
        for s in states:
            text_scale, image_scale = plans[s.job_id]
            _, c, t, h, w = s.x.shape
            v = torch.zeros_like(s.x)
            for e, weight in zip(s.choice.experts, s.choice.weights):
                out = {b: unpack(outputs[(s.job_id, e, b)], t, h, w, self.model.expert_config.patch_size) for b in branches[s.job_id]}
                if image_scale is not None:
                    guided = sampling.image_text_cfg(out["cond"], out["null_text"], out["null_all"], text_scale, image_scale)
                elif "null_text" in out:
                    guided = sampling.text_cfg(out["cond"], out["null_text"], text_scale)
                else:
                    guided = out["cond"]
                v = v + weight * guided
            s.x = sampling.euler_step(s.x, v, s.ts[s.step], s.ts[s.step + 1])
            s.step += 1
            s.choice = None
            events.append(Progress(s.job_id, s.step, s.total))

    def _expert_forward(self, expert, rows) -> torch.Tensor:
        dtype = expert.dtype
        img = torch.cat([pack(s.x, expert.config.patch_size) for s, _ in rows]).to(dtype)
        inputs = [self._row_inputs(s, b) for s, b in rows]
        txt = torch.cat([i[0] for i in inputs]).to(dtype)
        vec = torch.cat([i[1] for i in inputs]).to(dtype)
        cond = torch.cat([i[2] for i in inputs]).to(dtype) if expert.config.cond_embed else None
        img_ids = torch.cat([s.img_ids for s, _ in rows])
        txt_ids = torch.zeros(len(rows), txt.shape[1], 3, device=img.device)
        timesteps = torch.tensor([s.t for s, _ in rows], device=img.device, dtype=torch.float32)
        self.stats.expert_forwards += 1
        self.stats.expert_rows += len(rows)
        return expert(img, img_ids, txt, txt_ids, timesteps, vec, cond).float()

    def _finish_done(self, events: list) -> None:
        done = [s for s in self.active.values() if s.step >= s.total]
        if not done:
            return
        for group in _group_by(done, lambda s: tuple(s.x.shape)):
            latents = []
            for s in group:
                x = s.x.clone()
                if s.ref_latent is not None:
                    x[:, :, :1] = s.ref_latent  # i2v: the given first frame replaces latent frame 0
                latents.append(x)
            try:
                videos = self._timed(vae_decode, self.model.get("vae"), torch.cat(latents))
            except Exception as exc:
                events += [Failed(s.job_id, f"decoding failed: {exc}") for s in group]
                videos = None
            for i, s in enumerate(group):
                del self.active[s.job_id]
                if videos is not None:
                    stats = self.model.residency.stats
                    moved = ResidencyDelta(expert_loads=stats.expert_loads() - s.loads_at_start[0],
                                           bytes_to_device=stats.bytes_to_device - s.loads_at_start[1],
                                           max_waited_ticks=s.max_waited)
                    result = GenerationResult(videos[i][: s.req.num_frames], s.req, s.trace,
                                              s.trace.summary(self.model.num_experts), moved)
                    events.append(Finished(s.job_id, result))


def _group_by(items, key) -> list[list]:
    groups: dict = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return list(groups.values())
