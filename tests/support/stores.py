"""The job store's two sides on one connection, for tests that play the API and a worker at once."""

from server.queue.job_queue import JobQueue
from server.queue.worker_store import WorkerStore


class JobStore(JobQueue, WorkerStore):
    """Both sides: the API holds a JobQueue, a worker a WorkerStore; these tests are both."""
