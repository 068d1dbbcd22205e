"""Rank 0's side: the engine's expert runner for a worker group.

Each tick (Engine._run_experts hands over every planned expert's rows):
  1. each row goes to a rank holding its expert. An expert on one rank gets all its rows, cut
     into forwards exactly as one process cuts them (so outputs are bit for bit the same). An
     expert on several ranks splits its rows between them, each row (request, expert, guidance
     branch) sticking to the rank it first went to, least loaded first: a request's CFG rows
     run on two devices at once, and a row's step cache stays where the row computes;
  2. one message per rank with work: the latents of its requests (once per request, whatever
     the rows), the conditioning of requests and texts new to it (once per request or text per
     rank, cached there until rank 0 says to drop it), and its forwards;
  3. rank 0 computes the forwards it holds itself while the others compute theirs;
  4. the velocities come back (in the expert's dtype: exact, the forward's output is in it) and
     the engine completes the step. A forward that fails on a rank fails the requests routed to
     that expert, as in one process; a rank that fails ends the group (GroupFailed).

Latents and conditioning travel in the expert's dtype: the forward casts them to it first thing
(after packing, a reshape), so casting before sending changes nothing.
"""

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from ..checkpoint import TORCH_DTYPES
from ..engine import Engine, failure_code
from ..manifest import expert_key
from ..sampling import Branch
from ..scheduler import TickPlan
from .group import GroupFailed, GroupInfo
from .wire import Link, Traffic


@dataclass
class RankState:
    """What rank 0 knows a rank holds."""

    jobs: set = field(default_factory=set)
    texts: set = field(default_factory=set)


class GroupRunner:
    def __init__(self, group: GroupInfo, placement: dict[str, tuple[int, ...]], wire_dtype: torch.dtype):
        """`placement`: expert key -> the ranks holding it (rank 0 included where it holds it)."""
        self.group, self.placement, self.wire_dtype = group, placement, wire_dtype
        self.traffic = Traffic()
        self.links = {r: Link(group, r, self.traffic) for r in range(1, group.world_size)}
        self.ranks = {r: RankState() for r in self.links}
        self.sticky: dict[tuple[str, str, Branch], int] = {}
        self.job_texts: dict[str, tuple[str, str]] = {}
        self.lock = threading.Lock()  # one exchange at a time per link: the heartbeat pings between ticks
        self.last_exchange = {r: time.monotonic() for r in self.links}
        self.failed: GroupFailed | None = None
        self.steps = 0  # ticks that sent rows
        self.conditioning_sends: Counter = Counter()  # (rank, job) and (rank, text) -> times sent
        self.bytes_streamed: dict[int, int] = {}  # rank -> bytes its residency streamed so far (its last answer)

    @classmethod
    def for_model(cls, group: GroupInfo, model, placement: dict[str, tuple[int, ...]]) -> "GroupRunner":
        missing = [expert_key(i) for i in range(model.num_experts) if expert_key(i) not in placement]
        if missing:
            raise ValueError(f"placement names no rank for {', '.join(missing)}")
        return cls(group, placement, TORCH_DTYPES[model.manifest.components.experts[0].dtype])

    # -- one tick ----------------------------------------------------------------------------
    def run(self, engine: Engine, plan: TickPlan, work: dict, events: list) -> dict:
        with self.lock:
            if self.failed is not None:
                raise self.failed
            try:
                return self._run(engine, plan, work, events)
            except GroupFailed as exc:
                self.failed = exc
                raise

    def _run(self, engine: Engine, plan: TickPlan, work: dict, events: list) -> dict:
        start = time.perf_counter()
        active = engine.active
        for job_id in [j for j in self.job_texts if j not in active]:
            del self.job_texts[job_id]
        self.sticky = {k: r for k, r in self.sticky.items() if k[0] in active}
        for s, _ in (row for rows in work.values() for row in rows):
            self.job_texts.setdefault(s.job_id, (engine._prompt_text(s.request), s.request.negative_prompt))
        chunks = self._assign(engine, work)  # rank -> [(key, chunk)]
        messages = {r: self._message(r, chunks.get(r, []), active) for r in self.links}
        sent = [r for r, m in messages.items() if m is not None]
        for r in sent:
            self.links[r].send(*messages[r])
        outputs = self._run_here(engine, plan, chunks.get(0, []), events)
        for r in sent:
            header, outs = self.links[r].recv()
            self._collect(engine, r, chunks.get(r, []), header, iter(outs), outputs, events)
            self.last_exchange[r] = time.monotonic()
        if sent:
            self.steps += 1
        engine.stats.forward_seconds += time.perf_counter() - start
        return outputs

    def _assign(self, engine: Engine, work: dict) -> dict[int, list]:
        per_rank: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for key, rows in work.items():
            holders = self.placement[key]
            load = Counter(r for (j, k, b), r in self.sticky.items() if k == key)
            for s, b in rows:
                if s.job_id not in engine.active:
                    continue
                if len(holders) == 1:
                    rank = holders[0]
                else:
                    rank = self.sticky.get((s.job_id, key, b))
                    if rank is None:
                        rank = min(holders, key=lambda r: (load[r], r))
                        self.sticky[s.job_id, key, b] = rank
                        load[rank] += 1
                per_rank[rank][key].append((s, b))
        return {r: [(key, chunk) for key, rows in keys.items() for chunk in engine.forward_chunks(rows)]
                for r, keys in per_rank.items()}

    def _message(self, r: int, chunks: list, active: dict) -> tuple[dict, list] | None:
        held = self.ranks[r]
        gone = held.jobs - active.keys()
        jobs = {s.job_id: s for _, chunk in chunks for s, _ in chunk}
        if not jobs and not gone:
            return None
        held.jobs -= gone
        new_jobs = [s for j, s in jobs.items() if j not in held.jobs]
        held.jobs |= jobs.keys()
        needed = {t for j in held.jobs for t in self.job_texts[j]}
        drop_texts = sorted(held.texts - needed)
        new_texts: dict[str, object] = {}
        for s in new_jobs:
            prompt, negative = self.job_texts[s.job_id]
            for text, emb in ((prompt, s.prompt), (negative, s.negative)):
                if text not in held.texts:
                    new_texts[text] = emb
        held.texts = needed
        self.conditioning_sends.update([(r, "job", s.job_id) for s in new_jobs] + [(r, "text", t) for t in new_texts])
        wire = self.wire_dtype
        tensors = [x.to(wire) for e in new_texts.values() for x in (e.tokens, e.pooled)]
        for s in new_jobs:
            tensors.append(s.img_ids)
            if s.first_frame_cond is not None:
                tensors.append(s.first_frame_cond.to(wire))
        tensors += [s.latents.to(wire) for s in jobs.values()]
        header = {
            "kind": "tick", "wire_dtype": str(wire).removeprefix("torch."),
            "drop_jobs": sorted(gone), "drop_texts": drop_texts, "texts": list(new_texts),
            "jobs": [{"job": s.job_id, "prompt": self.job_texts[s.job_id][0], "negative": self.job_texts[s.job_id][1],
                      "speed": str(s.request.speed), "total": s.total, "has_cond": s.first_frame_cond is not None}
                     for s in new_jobs],
            "latents": [(j, s.step, s.t) for j, s in jobs.items()],
            "chunks": [(key, [(s.job_id, b.value) for s, b in chunk]) for key, chunk in chunks],
        }
        return header, tensors

    def _run_here(self, engine: Engine, plan: TickPlan, chunks: list, events: list) -> dict:
        """Rank 0's own forwards, as Engine._run_experts runs them."""
        outputs, failed_keys = {}, set()
        for key, chunk in chunks:
            chunk = [(s, b) for s, b in chunk if s.job_id in engine.active]
            if key in failed_keys or not chunk:
                continue
            try:
                out = engine._expert_forward(engine.model.get(key, plan.demand), key, chunk)
            except Exception as exc:
                failed_keys.add(key)
                self._fail(engine, key, chunk, f"{key} failed: {exc}", failure_code(exc, "denoise_failed"), events)
                continue
            for i, (s, b) in enumerate(chunk):
                outputs[s.job_id, key, b] = out[i : i + 1]
        return outputs

    def _collect(self, engine: Engine, r: int, chunks: list, header: dict, outs, outputs: dict, events: list) -> None:
        if header.get("kind") != "done" or len(header["chunks"]) != len(chunks):
            raise GroupFailed(f"rank {r} answered {header.get('kind')!r} with {len(header.get('chunks', []))} "
                              f"forwards for {len(chunks)}")
        self.bytes_streamed[r] = header["bytes_streamed"]
        device = engine.model.device
        for (key, chunk), reply in zip(chunks, header["chunks"]):
            if not reply["ok"]:
                self._fail(engine, key, chunk, f"{key} failed on rank {r}: {reply['error']}", reply["code"], events)
                continue
            out = next(outs).to(device).float()
            engine.stats.expert_forwards += 1
            engine.stats.expert_rows += len(chunk)
            for i, ((s, b), (blocks, of)) in enumerate(zip(chunk, reply["ran"])):
                s.compute.ran_row(blocks, of)
                outputs[s.job_id, key, b] = out[i : i + 1]

    @staticmethod
    def _fail(engine: Engine, key: str, chunk: list, message: str, code: str, events: list) -> None:
        engine._fail(sorted({s.job_id for s, _ in chunk if s.job_id in engine.active}), message, code, events)

    # -- between ticks -----------------------------------------------------------------------
    def ping_idle(self, idle_s: float) -> None:
        """Pings every rank that has not heard from rank 0 for `idle_s` (so it knows rank 0 is
        alive) and waits for its answer (so rank 0 knows it is). Raises GroupFailed."""
        with self.lock:
            if self.failed is not None:
                raise self.failed
            for r, link in self.links.items():
                if time.monotonic() - self.last_exchange[r] < idle_s:
                    continue
                try:
                    link.send({"kind": "ping"})
                    header, _ = link.recv()
                    if header.get("kind") != "pong":
                        raise GroupFailed(f"rank {r} answered a ping with {header.get('kind')!r}")
                except GroupFailed as exc:
                    self.failed = exc
                    raise
                self.last_exchange[r] = time.monotonic()

    def stop(self) -> None:
        """Tells every rank to exit (they exit 0). Best effort: a rank already gone is ignored."""
        with self.lock:
            for link in self.links.values():
                try:
                    link.send({"kind": "stop"})
                except GroupFailed:
                    pass


class Heartbeat:
    """Rank 0's pinger: every third of the timeout, idle ranks are pinged. On a failure it
    records it (the next tick raises it) and calls `on_failure`, so an idle worker notices too."""

    def __init__(self, runner: GroupRunner, on_failure):
        self.runner, self.on_failure = runner, on_failure
        self.period = runner.group.timeout_s / 3
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="group-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                self.runner.ping_idle(self.period)
            except GroupFailed as exc:
                self.on_failure(exc)
                return

    def stop(self) -> None:
        self.stopped.set()


class GroupResidency:
    """Rank 0's residency as the scheduler should see it in a group: the experts held by other
    ranks are resident there (placed by the planner), so they never count against rank 0's
    budget nor wait to be loaded. Everything else is rank 0's own residency."""

    def __init__(self, residency, remote: frozenset[str]):
        self._residency, self._remote = residency, remote

    def is_resident(self, name: str) -> bool:
        return name in self._remote or self._residency.is_resident(name)

    def is_streamed(self, name: str) -> bool:
        return name not in self._remote and self._residency.is_streamed(name)

    def fits(self, names: set[str]) -> bool:
        return self._residency.fits(set(names) - self._remote)

    def __getattr__(self, name):
        return getattr(self._residency, name)
