import math

import pytest
import torch

from pipeline.engine import Engine
from pipeline.request import GenerationRequest, resolve
from pipeline.results import TraceStep
from pipeline.routing import Choice, ExpertSchedule, FixedExpert, FullEnsemble, RoutingTrace, TopK, policy_for
from tests.support.jobs import run_jobs

LOGITS = torch.tensor([0.0, 2.0, 1.0])
PROBS = [math.exp(v) / sum(math.exp(x) for x in (0.0, 2.0, 1.0)) for v in (0.0, 2.0, 1.0)]


def test_top1_picks_the_largest_logit_with_weight_one():
    choice = TopK(1).choose(0, LOGITS)
    assert choice.experts == (1,) and choice.weights == (1.0,)


def test_top2_renormalises_softmax_over_the_chosen_pair():
    choice = TopK(2).choose(0, LOGITS)
    assert choice.experts == (1, 2)
    assert choice.weights == pytest.approx((PROBS[1] / (PROBS[1] + PROBS[2]), PROBS[2] / (PROBS[1] + PROBS[2])))


def test_top2_without_renormalisation_keeps_softmax_weights():
    assert TopK(2, renormalize=False).choose(0, LOGITS).weights == pytest.approx((PROBS[1], PROBS[2]))


def test_full_ensemble_uses_every_expert_with_softmax_weights():
    choice = FullEnsemble().choose(0, LOGITS)
    assert choice.experts == (0, 1, 2) and choice.weights == pytest.approx(tuple(PROBS))


def test_fixed_and_schedule_ignore_logits():
    assert FixedExpert(2).choose(5).experts == (2,)
    schedule = ExpertSchedule([0, 1, 1, 0])
    assert [schedule.choose(i).experts[0] for i in range(4)] == [0, 1, 1, 0]
    assert not FixedExpert(0).needs_router and not ExpertSchedule([0]).needs_router


def test_policy_for_each_routing_mode(tiny_model):
    def policy(**fields):
        return policy_for(resolve(tiny_model.manifest, GenerationRequest("x", **fields)), renormalize=False)

    assert policy(routing="fixed", expert=2).choose(3, None) == Choice((2,), (1.0,))
    assert policy(routing="schedule", expert_schedule=[0, 2, 1, 1]).choose(1, None) == Choice((2,), (1.0,))
    assert policy(routing="ensemble").choose(0, LOGITS).experts == (0, 1, 2)
    top2 = policy(top_k=2)
    assert top2.needs_router and top2.choose(0, LOGITS).weights == pytest.approx((PROBS[1], PROBS[2]))  # not renormalised
    assert not policy(routing="fixed", expert=0).needs_router


def test_trace_records_steps_and_shares():
    trace = RoutingTrace()
    trace.record(0, 1.0, TopK(2).choose(0, LOGITS))
    trace.record(1, 0.5, FixedExpert(0).choose(1))
    assert trace.steps[1] == TraceStep(step=1, t=0.5, experts=[0], weights=[1.0])
    trace.record(2, 0.25, Choice((1, 2), (0.75, 0.25)))
    summary = trace.summary(3)
    # by hand: step 0 runs experts 1 and 2 (top-2 of LOGITS), step 1 expert 0, step 2 experts 1 and 2
    w1, w2 = math.e**2 / (math.e**2 + math.e), math.e / (math.e**2 + math.e)
    assert summary.step_share == [round(1 / 3, 4), round(2 / 3, 4), round(2 / 3, 4)]
    assert summary.weight_share == pytest.approx([1 / 3, (w1 + 0.75) / 3, (w2 + 0.25) / 3], abs=1e-4)
    assert sum(summary.weight_share) == pytest.approx(1.0, abs=1e-3)


def run(model, request):
    return run_jobs(Engine(model), [("job", request)])["job"]


def count_router_calls(model):
    router = model.get("router")
    calls = []
    handle = router.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_engine_router_decides_top_k_every_step(tiny_model):
    calls, handle = count_router_calls(tiny_model)
    try:
        result = run(tiny_model, GenerationRequest("a red circle", seed=1, top_k=2))
    finally:
        handle.remove()
    assert len(calls) == 4  # one router forward per step
    assert all(len(s.experts) == 2 and sum(s.weights) == pytest.approx(1.0) for s in result.trace.steps)


def test_engine_fixed_expert_and_schedule_never_call_the_router(tiny_model):
    calls, handle = count_router_calls(tiny_model)
    try:
        fixed = run(tiny_model, GenerationRequest("a red circle", seed=1, routing="fixed", expert=2))
        scheduled = run(tiny_model, GenerationRequest("a red circle", seed=1, routing="schedule", expert_schedule=[0, 1, 0, 2]))
    finally:
        handle.remove()
    assert calls == []
    assert [s.experts for s in fixed.trace.steps] == [[2]] * 4
    assert [s.experts[0] for s in scheduled.trace.steps] == [0, 1, 0, 2]
