"""The tick scheduler on plain data: no tensors, no model (and no torch import here)."""

import random
import subprocess
from collections import Counter
import sys
from pathlib import Path

from pipeline.scheduler import ExpertScheduler, RequestNeeds, TickPlan

ALWAYS = frozenset({"router", "vae"})
SIZES = {"router": 1, "vae": 1, "expert_0": 10, "expert_1": 10, "expert_2": 10}
ONE_EXPERT = 2 + 15  # the always-needed components and one expert, not two


class FakeResidency:
    """A residency view in plain data: sizes, a byte budget, and an LRU of resident experts
    (the always-needed components stay resident)."""

    def __init__(self, budget: int | None, resident: tuple[str, ...] = (), streamed: tuple[str, ...] = ()):
        self.budget = budget
        self.experts = list(resident)  # least recently used first
        self.streamed = streamed  # never placed: their blocks pass through a window apart from the budget

    def is_resident(self, name: str) -> bool:
        return name in ALWAYS or name in self.experts

    def is_streamed(self, name: str) -> bool:
        return name in self.streamed

    def fits(self, names: set[str]) -> bool:
        return self.budget is None or sum(SIZES[n] for n in names if n not in self.streamed) <= self.budget

    def run(self, plan: TickPlan) -> int:
        """Load the plan's experts in order, evicting the least recently used; returns the loads."""
        loads = 0
        for key in plan.expert_order:
            if key in self.streamed:
                continue
            if key in self.experts:
                self.experts.remove(key)
            else:
                loads += 1
            self.experts.append(key)
            while len(self.experts) > 1 and not self.fits(ALWAYS | set(self.experts)):
                self.experts.pop(0)
        return loads


def needs(request_id: str, *experts: int, waited: int = 0) -> RequestNeeds:
    return RequestNeeds(request_id, frozenset(f"expert_{e}" for e in experts), waited)


def test_everything_fits_all_advance_resident_first_with_prefetch_of_the_next():
    requests = [needs("a", 0), needs("b", 1, 2), needs("c", 2)]
    plan = ExpertScheduler(max_wait=4, always_needed=ALWAYS).schedule(requests, FakeResidency(None, ("expert_2",)))
    assert plan == TickPlan(advance=("a", "b", "c"), expert_order=("expert_2", "expert_0", "expert_1"),
                            prefetch={"expert_2": "expert_0", "expert_0": "expert_1"},
                            demand=frozenset({"expert_0", "expert_1", "expert_2"}) | ALWAYS)


def test_budget_of_one_expert_serves_the_resident_expert_and_prefetches_a_waiting_one():
    requests = [needs("a", 0), needs("b", 1), needs("c", 2), needs("d", 1)]
    plan = ExpertScheduler(max_wait=4, always_needed=ALWAYS).schedule(requests, FakeResidency(ONE_EXPERT, ("expert_2",)))
    assert plan.advance == ("c",)  # expert_2 is resident: no load, though expert_1 has more requests
    assert plan.expert_order == ("expert_2",)
    assert plan.prefetch == {"expert_2": "expert_0"}  # the first waiting expert by name
    assert plan.demand == ALWAYS | {"expert_2"}


def test_budget_of_one_expert_with_none_resident_serves_the_most_demanded():
    requests = [needs("a", 0), needs("b", 1), needs("c", 2), needs("d", 1)]
    plan = ExpertScheduler(max_wait=4, always_needed=ALWAYS).schedule(requests, FakeResidency(ONE_EXPERT))
    assert plan.advance == ("b", "d") and plan.expert_order == ("expert_1",)
    assert plan.prefetch == {"expert_1": "expert_0"}


def test_a_request_that_waited_max_wait_ticks_is_served_first_most_waited_first():
    requests = [needs("a", 0), needs("b", 1, waited=3), needs("c", 2, waited=5), needs("d", 0)]
    scheduler = ExpertScheduler(max_wait=3, always_needed=ALWAYS)
    plan = scheduler.schedule(requests, FakeResidency(ONE_EXPERT, ("expert_0",)))
    assert plan.advance == ("c",)  # c waited longest; b waited max_wait too but comes next
    shorter = scheduler.schedule(requests[:2] + requests[3:], FakeResidency(ONE_EXPERT, ("expert_0",)))
    assert shorter.advance == ("b",)
    patient = ExpertScheduler(max_wait=6, always_needed=ALWAYS).schedule(requests, FakeResidency(ONE_EXPERT, ("expert_0",)))
    assert patient.advance == ("a", "d")  # nobody has waited max_wait: the resident expert wins


def test_requests_whose_experts_alone_exceed_the_budget_run_one_at_a_time_most_waited_first():
    requests = [needs("a", 0, 1), needs("b", 1, 2, waited=2), needs("c", 0, 2), needs("d", 2, waited=1)]
    plan = ExpertScheduler(max_wait=8, always_needed=ALWAYS).schedule(requests, FakeResidency(ONE_EXPERT, ("expert_1",)))
    # expert_1 (resident) is served, but no top-2 request fits: the longest waiting, b, runs, and
    # d with it, whose one expert b loads anyway
    assert plan.advance == ("b", "d")
    assert plan.expert_order == ("expert_1", "expert_2")  # resident first, the other loaded after it
    assert plan.prefetch == {"expert_1": "expert_2", "expert_2": "expert_0"}


def test_an_expert_larger_than_the_whole_budget_still_runs():
    requests = [needs("a", 0), needs("b", 1, waited=1)]
    plan = ExpertScheduler(max_wait=8, always_needed=ALWAYS).schedule(requests, FakeResidency(budget=5))
    assert plan.advance == ("b",) and plan.expert_order == ("expert_1",)


def test_a_starving_request_too_large_for_the_budget_still_runs():
    requests = [needs("a", 0), needs("b", 1, 2, waited=4)]
    plan = ExpertScheduler(max_wait=4, always_needed=ALWAYS).schedule(requests, FakeResidency(ONE_EXPERT, ("expert_0",)))
    assert plan.advance == ("b",)


def test_no_requests_is_an_empty_plan():
    assert ExpertScheduler(max_wait=1, always_needed=ALWAYS).schedule([], FakeResidency(ONE_EXPERT)) == \
        TickPlan(advance=(), expert_order=(), prefetch={}, demand=ALWAYS)


def simulate(max_wait: int, max_batch: int, ticks: int, choose, steps: int = 6, residency: FakeResidency | None = None,
             stream_batch: int = 1, passes: Counter | None = None) -> tuple[int, int, int]:
    """A steady stream: a free slot is filled at once; `choose(request, step)` gives a request's
    expert at a step. Returns (longest consecutive wait, requests finished, expert loads);
    `passes`, if given, counts the ticks each expert runs in."""
    scheduler = ExpertScheduler(max_wait, always_needed=ALWAYS, stream_batch=stream_batch)
    residency = residency or FakeResidency(ONE_EXPERT)
    active: dict[int, dict] = {}
    arrivals, longest, finished, loads = 0, 0, 0, 0
    for _ in range(ticks):
        while len(active) < max_batch:
            active[arrivals] = {"step": 0, "waited": 0, "expert": choose(arrivals, 0)}
            arrivals += 1
        plan = scheduler.schedule([needs(str(i), r["expert"], waited=r["waited"]) for i, r in active.items()], residency)
        loads += residency.run(plan)
        if passes is not None:
            passes.update(plan.expert_order)
        for i, r in list(active.items()):
            if str(i) not in plan.advance:
                r["waited"] += 1
                longest = max(longest, r["waited"])
                continue
            r["waited"], r["step"] = 0, r["step"] + 1
            if r["step"] == steps:
                del active[i]
                finished += 1
            else:
                r["expert"] = choose(i, r["step"])
    return longest, finished, loads


def test_no_request_waits_beyond_the_bound_under_a_steady_stream():
    max_wait, max_batch = 3, 4
    rng = random.Random(0)
    experts = {}

    def routed(request, step):  # a router changing its mind between steps
        return experts.setdefault((request, step), rng.randrange(3))

    longest, finished, _ = simulate(max_wait, max_batch, ticks=2000, choose=routed)
    assert finished > 2000 // (6 * 3)  # the stream keeps moving
    assert max_wait <= longest <= max_wait + max_batch - 1  # contention reached the bound's first term


def test_the_fairness_rule_is_what_keeps_a_rare_expert_from_starving():
    def mostly_expert_0(request, step):  # every fourth request needs expert 1, the rest expert 0
        return 1 if request % 4 == 3 else 0

    bounded, finished, _ = simulate(max_wait=3, max_batch=4, ticks=400, choose=mostly_expert_0)
    assert bounded <= 3 + 4 - 1 and finished > 0
    unbounded, _, _ = simulate(max_wait=10**6, max_batch=4, ticks=400, choose=mostly_expert_0)
    assert unbounded > 3 + 4 - 1  # resident-first alone keeps it waiting while expert 0 has work


def test_a_longer_max_wait_trades_waiting_for_fewer_loads():
    def by_cluster(request, step):
        return request % 3

    *_, short_loads = simulate(max_wait=1, max_batch=6, ticks=600, choose=by_cluster)
    long_wait, _, long_loads = simulate(max_wait=12, max_batch=6, ticks=600, choose=by_cluster)
    assert long_loads < short_loads and long_wait <= 12 + 6 - 1


def test_streamed_experts_run_last_take_no_budget_and_nothing_is_prefetched_around_them():
    requests = [needs("a", 0), needs("b", 1), needs("c", 2)]
    residency = FakeResidency(ONE_EXPERT, resident=("expert_0",), streamed=("expert_2",))
    plan = ExpertScheduler(max_wait=4, always_needed=ALWAYS).schedule(requests, residency)
    assert plan.advance == ("a", "c")  # expert_1 does not fit beside expert_0; the streamed expert_2 needs no room
    assert plan.expert_order == ("expert_0", "expert_2") and plan.streamed == {"expert_2"}
    assert plan.prefetch == {}  # expert_1's copy would hold up expert_2's blocks
    alone = ExpertScheduler(max_wait=4, always_needed=ALWAYS).schedule(requests[:2], residency)
    assert alone.prefetch == {"expert_0": "expert_1"} and alone.streamed == frozenset()
    everything = FakeResidency(None, resident=("expert_1",), streamed=("expert_0",))
    plan = ExpertScheduler(max_wait=4, always_needed=ALWAYS).schedule(requests, everything)
    assert plan.expert_order == ("expert_1", "expert_2", "expert_0") and plan.prefetch == {"expert_1": "expert_2"}


def test_a_streamed_expert_with_few_requests_waits_for_more_while_others_advance():
    residency = FakeResidency(None, streamed=("expert_2",))
    scheduler = ExpertScheduler(max_wait=4, always_needed=ALWAYS, stream_batch=2)
    assert scheduler.schedule([needs("a", 2), needs("b", 0), needs("c", 1)], residency).advance == ("b", "c")
    assert scheduler.schedule([needs("a", 2), needs("b", 0), needs("d", 2)], residency).advance == ("a", "b", "d")
    assert scheduler.schedule([needs("a", 2, waited=4), needs("b", 0)], residency).advance == ("a", "b")  # waited enough
    assert scheduler.schedule([needs("a", 2), needs("c", 2, 1)], residency).advance == ("a", "c")  # two requests
    assert scheduler.schedule([needs("a", 2)], residency).advance == ("a",)  # nothing else would run


def test_gathering_serves_a_streamed_experts_rows_in_fewer_passes_within_the_fairness_bound():
    max_wait, max_batch, ticks = 6, 6, 3000
    rng = random.Random(1)
    experts = {}

    def routed(request, step):
        return experts.setdefault((request, step), rng.randrange(3))

    results = {}
    for stream_batch in (1, 3):
        passes = Counter()
        longest, finished, _ = simulate(max_wait, max_batch, ticks, routed, residency=FakeResidency(None, streamed=("expert_2",)),
                                        stream_batch=stream_batch, passes=passes)
        results[stream_batch] = (longest, finished, passes["expert_2"])
        assert longest <= max_wait + max_batch - 1
    (_, finished_1, passes_1), (longest_3, finished_3, passes_3) = results[1], results[3]
    # the same requests pass through expert_2 (a third of the steps), in fewer passes
    steps_1, steps_3 = finished_1 * 6 / 3, finished_3 * 6 / 3
    assert passes_3 / steps_3 < 0.7 * passes_1 / steps_1
    assert longest_3 > 0 and finished_3 > 0.8 * finished_1  # it costs some waiting, little progress


def test_the_scheduler_module_does_not_import_torch():
    code = "import sys, pipeline.scheduler; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0
