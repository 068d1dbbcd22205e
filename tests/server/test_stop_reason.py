"""Why a running job stops, from the state a step report read (server/worker/loop.py:
Worker._stop_reason). The lease keeper can learn of a cancel before the step report does: a
report read before the renewal failed must not turn a cancel into `fenced_out`."""

from server.queue.jobs import JobStatus
from server.queue.store import Claim, JobState
from server.worker.leases import RunningJob
from server.worker.loop import Worker


def running(lease_lost_at: float | None = None) -> RunningJob:
    return RunningJob(Claim("video_" + "0" * 32, "1-0", fence=3, attempts=1), started=0.0, deadline=1e12,
                      lease_lost_at=lease_lost_at)


def test_states_that_stop_a_job():
    job = running()
    assert Worker._stop_reason(job, JobState(None, None), read_after=5.0) == "deleted"
    assert Worker._stop_reason(job, JobState(JobStatus.IN_PROGRESS, 4), read_after=5.0) == "fenced_out"
    assert Worker._stop_reason(job, JobState(JobStatus.FAILED, 3), read_after=5.0) == "cancelled"
    assert Worker._stop_reason(job, JobState(JobStatus.IN_PROGRESS, 3), read_after=5.0) is None


def test_a_report_older_than_the_lost_lease_waits_for_the_next():
    """The renewal failed at t=10 (a cancel came before it); a report sent at t=9 may still read
    the job running under our fence: no verdict from it. The next report says cancelled."""
    job = running(lease_lost_at=10.0)
    assert Worker._stop_reason(job, JobState(JobStatus.IN_PROGRESS, 3), read_after=9.0) is None
    assert Worker._stop_reason(job, JobState(JobStatus.FAILED, 3), read_after=11.0) == "cancelled"


def test_a_lost_lease_the_next_report_cannot_explain_is_fenced_out():
    """A report sent after the lease was found lost still reads the job as ours (its stream
    entry went to another worker that has not claimed it yet): the job stops as fenced out."""
    job = running(lease_lost_at=10.0)
    assert Worker._stop_reason(job, JobState(JobStatus.IN_PROGRESS, 3), read_after=10.0) == "fenced_out"
