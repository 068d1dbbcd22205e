"""What a job's changes tell the outside world: its event log (server/notify/events.py) and, once it
ends, its webhooks (server/notify/webhooks/).

The job store (server/queue/job_queue.py, worker_store.py) queues these writes in the same MULTI
as the change they report, right after its script, each guarded by the state that change leaves (server/queue/guard.py): a change the state
machine refused (a stale fence, a job already finished) tells nobody anything, and no crash can
land between a job's end and its event and deliveries.
"""

from __future__ import annotations

import redis

from .events import EventType, JobEvents
from server.queue.guard import Guard
from server.queue.jobs import JobStatus
from .webhooks import Outbox, WebhookEventType, video_event


class JobNotices:
    def __init__(self, client: redis.Redis, prefix: str):
        self.events = JobEvents(prefix)
        self.outbox = Outbox(client, prefix)

    def queued(self, pipe, job_key: str, job_id: str, position: int) -> None:
        """Only while the job still waits: a worker may have taken it already."""
        self.events.publish(pipe, job_id, EventType.QUEUED, {"position": position},
                            Guard(job_key, {"status": JobStatus.QUEUED}))

    def progress(self, pipe, job_key: str, job_id: str, fence: int, payload: dict[str, object]) -> None:
        """A step's progress (server/queue/worker_store.py: StepProgress.event), only while `fence` holds the job."""
        self.events.publish(pipe, job_id, EventType.PROGRESS, payload,
                            Guard(job_key, {"status": JobStatus.IN_PROGRESS, "fence": str(fence)}))

    def ended(self, pipe, job_key: str, job_id: str, urls: list[str], *, fence: int | None,
              error: tuple[str, str] | None) -> None:
        """The job completed (error None) or failed with (code, message): its terminal event and
        its webhook deliveries. The guard names the fence the settle held (None for a cancel,
        which holds none) and, for a failure, the error code it wrote."""
        held = {"status": JobStatus.FAILED if error else JobStatus.COMPLETED}
        if fence is not None:
            held["fence"] = str(fence)
        if error:
            held["error_code"] = error[0]
        guard = Guard(job_key, held)
        if error:
            self.events.publish(pipe, job_id, EventType.FAILED, {"code": error[0], "message": error[1]}, guard)
        else:
            self.events.publish(pipe, job_id, EventType.COMPLETED, {"progress": 100}, guard)
        kind = WebhookEventType.VIDEO_FAILED if error else WebhookEventType.VIDEO_COMPLETED
        self.outbox.enqueue(pipe, video_event(kind, job_id), urls, guard)

    def deliveries(self, job_id: str) -> list[dict]:
        """The job's webhook deliveries and their attempts (for the Video object)."""
        return self.outbox.deliveries(job_id)
