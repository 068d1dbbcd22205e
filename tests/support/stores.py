"""Both sides of the job store on one connection, for tests that play the API and a worker at
once (the API holds a JobQueue, a worker a WorkerStore)."""

from server.queue.job_queue import JobQueue
from server.queue.worker_store import WorkerStore


class JobStore(JobQueue, WorkerStore):
    pass
