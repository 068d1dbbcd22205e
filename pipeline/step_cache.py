"""Step caching per row inside the continuous batch.

Between neighbouring denoising steps an expert's blocks add nearly the same residual to the
image tokens. Each row (one request's guidance branch through one expert) watches the input its
first block reads, the image tokens modulated by timestep and text (TeaCache's signal): while
the relative L1 changes of that input, summed since the row last computed, stay under the
preset's threshold, the row skips every block and adds the residual the blocks produced when
it last computed. One batched forward mixes such rows with computing rows: the embedding runs
for every row, the decision is made per row, the blocks run for the computing rows only, and
the final layer runs for every row. This signal is known before any block runs, so a row that
reuses costs no block at all; the first block's output change (first-block cache) would make
every row pay one block to decide.

The cache lives with the request (`StepCache`, in its RequestState) and is keyed by expert and
branch. An entry serves only the step right after the one it last served: if the router moved
the request to another expert, or guidance left a branch out at the previous step, the entry is
stale and the row computes (and refreshes it). Entries not used at a step are dropped.

Why not a library: diffusers' cache hooks (FirstBlockCache, MagCache, TaylorSeer in
`diffusers.hooks`) and cache-dit keep one state per module and cache context and decide once per
forward (a `.item()` over the whole batch), so a forward over rows of different requests at
different steps can only reuse all rows or none; they also need the block classes registered
in their block registries.
"""

from dataclasses import dataclass

import torch

from .models.expert import Hidden, MMDiT
from .sampling import Branch
from .speed import CachePolicy


@dataclass
class _Entry:
    signal: torch.Tensor  # (N, D): the modulated input at the step this entry last served
    residual: torch.Tensor  # (N, D): what the blocks added to the image tokens when the row last computed
    step: int  # the last step this entry served
    drift: float = 0.0  # relative changes of the signal summed since the row last computed
    reused: int = 0  # steps reused in a row since


class StepCache:
    """One request's cached residuals, an entry per (expert key, branch)."""

    def __init__(self, policy: CachePolicy, total_steps: int, rows: int = 0):
        self.policy = policy
        self.total_steps = total_steps
        self.rows = rows  # the rows (expert x branch a step) the engine granted it room for
        self._entries: dict[tuple[str, Branch], _Entry] = {}

    def candidate(self, key: str, branch: Branch, step: int) -> _Entry | None:
        """The entry this row may reuse at `step`, if any: never in the warm-up steps or the
        last step, never a stale entry, never more than `max_reuse` steps in a row."""
        p = self.policy
        if not p.enabled or step < p.warmup_steps(self.total_steps) or step >= self.total_steps - 1:
            return None
        entry = self._entries.get((key, branch))
        if entry is None or entry.step != step - 1 or entry.reused >= p.max_reuse:
            return None
        return entry

    def store(self, key: str, branch: Branch, step: int, signal: torch.Tensor, residual: torch.Tensor) -> None:
        if self.policy.enabled:  # a row without caching shares a cached forward but keeps nothing
            self._entries[key, branch] = _Entry(signal, residual, step)

    def drop(self, key: str, branch: Branch) -> None:
        """Frees a row's entry now (it computes at this step and stores a new one after)."""
        self._entries.pop((key, branch), None)

    def end_step(self, step: int) -> None:
        """Drops the entries this step did not use (their expert or branch did not run)."""
        self._entries = {k: e for k, e in self._entries.items() if e.step == step}


@dataclass(frozen=True)
class CacheRow:
    """One row of a batched expert forward, as the cache sees it."""

    cache: StepCache
    key: str
    branch: Branch
    step: int


def relative_change(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Per row, mean |now - before| / mean |before| over tokens and features (float32)."""
    now, before = now.float(), before.float()
    return (now - before).abs().mean(dim=(1, 2)) / before.abs().mean(dim=(1, 2)).clamp_min(1e-12)


def cached_forward(expert: MMDiT, inputs: tuple, rows: list[CacheRow], decide=None) -> tuple[torch.Tensor, list[int]]:
    """The expert's output for every row (`inputs` are MMDiT.forward's arguments), and the
    number of blocks each row ran. It is one call of the expert, so a streamed expert's hooks
    bring its stem and its blocks as in a plain forward (a pass where every row reuses runs no
    block but still copies the stem and the first window of blocks). `decide(signal, rows)`
    replaces the per-row choice (tests and the planner's meta-device measurements).

    Memory (the plan books it: pipeline/planner/plan.py). Between steps each cached row holds
    two (N, D) tensors, its signal and its residual. Inside the forward no row holds more: as
    soon as the rows have decided, the entry of a row that computes is dropped (it is
    replaced after the blocks) and a row that reuses gives up its old signal, so under the
    blocks a computing row holds its new signal and its input image tokens (kept for the
    residual) and a reusing row its new signal and its residual. When every row computes the
    blocks run on this forward's own state, with no gathered copy; when some reuse, only the
    computing rows are gathered and the full batch keeps just its image tokens and vector
    (all the final layer reads). The peak is then at most the plain forward's, plus two (N, D)
    tensors a row (tests/pipeline/test_plan_holds.py measures it at real size)."""
    blocks: list[int] = []

    def run(h: Hidden) -> Hidden:
        """Updates `h` (this forward's own) in place, as MMDiT.run_blocks does."""
        signal = expert.modulated_input(h)
        reuse = (decide or _decide)(signal, rows)
        # entries keep copies of their rows (a view would hold the whole batch's tensor)
        signals = [signal[i].clone() for i in range(len(rows))]
        del signal
        for r, entry, new in zip(rows, reuse, signals):
            if entry is None:
                r.cache.drop(r.key, r.branch)
            else:
                entry.signal, entry.step, entry.reused = new, r.step, entry.reused + 1
        compute = [i for i, entry in enumerate(reuse) if entry is None]
        img = h.img  # the blocks' input: residuals are measured against it
        if len(compute) == len(rows):
            out = expert.run_blocks(h).img
        elif compute:
            index = torch.tensor(compute, device=img.device)
            part = h.rows(index)
            h.txt = h.cos = h.sin = None  # only the image tokens and the vector are read after the blocks
            out = expert.run_blocks(part).img
            del part
        for j, i in enumerate(compute):
            r = rows[i]
            r.cache.store(r.key, r.branch, r.step, signals[i], out[j] - img[i])
        if len(compute) < len(rows):
            if compute:
                img[index] = out
            for i, entry in enumerate(reuse):
                if entry is not None:
                    img[i] += entry.residual
            h.img = img
        blocks.extend(0 if entry is not None else expert.num_blocks for entry in reuse)
        return h

    return expert(*inputs, blocks=run), blocks


def _decide(signal: torch.Tensor, rows: list[CacheRow]) -> list[_Entry | None]:
    """Per row, the entry it reuses (its drift updated), or None where it computes."""
    candidates = [r.cache.candidate(r.key, r.branch, r.step) for r in rows]
    found = [i for i, c in enumerate(candidates) if c is not None]
    reuse: list[_Entry | None] = [None] * len(rows)
    if not found:
        return reuse
    changes = relative_change(signal[found], torch.stack([candidates[i].signal for i in found])).tolist()
    for i, change in zip(found, changes):
        entry = candidates[i]
        if entry.drift + change < rows[i].cache.policy.threshold:
            entry.drift += change
            reuse[i] = entry
    return reuse
