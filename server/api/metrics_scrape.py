"""`GET /metrics` at scrape time: the counters and histograms every process wrote into Redis
(server/queue/metrics.py), and gauges read from the queue (depth, running jobs, live workers)."""

from __future__ import annotations

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from server.queue.jobs import JobStatus
from server.queue.metrics import JOB_BUCKETS, STEP_BUCKETS
from server.queue.job_queue import JobQueue


class RedisCollector:
    def __init__(self, store: JobQueue, heartbeat_ttl_s: float):
        self.store = store
        self.heartbeat_ttl_s = heartbeat_ttl_s

    def _histogram(self, name, doc, values, buckets):
        h = HistogramMetricFamily(name, doc)
        cum = [(str(b), values.get(f"{name}_bucket|{b}", 0.0)) for b in buckets]
        cum.append(("+Inf", values.get(f"{name}_count|", 0.0)))
        h.add_metric([], cum, values.get(f"{name}_sum|", 0.0))
        return h

    @staticmethod
    def _labelled(name, doc, label, values):
        """A counter with one label, from the `<name>_total|<label value>` fields."""
        counter = CounterMetricFamily(f"paris_{name}", doc, labels=[label])
        prefix = f"{name}_total|"
        for k, v in values.items():
            if k.startswith(prefix):
                counter.add_metric([k[len(prefix):]], v)
        return counter

    def collect(self):
        s = self.store
        try:
            values = s.metrics.values()
            depth = s.queue_depth()
            try:
                running = s.running_count()
            except redis.RedisError:  # no consumer group yet
                running = 0
            workers, storing = s.worker_counts(self.heartbeat_ttl_s)
        except redis.RedisError:
            return
        yield GaugeMetricFamily("paris_queue_depth", "Jobs queued and not yet started", value=depth)
        g = GaugeMetricFamily("paris_jobs", "Jobs by current status (active ones)", labels=["status"])
        g.add_metric([JobStatus.QUEUED], depth)
        g.add_metric([JobStatus.IN_PROGRESS], running)
        yield g
        yield GaugeMetricFamily("paris_workers_alive", "Workers with a fresh heartbeat", value=workers)
        yield GaugeMetricFamily("paris_workers_storage_down", "Live workers that cannot store videos (not claiming "
                                "jobs until their storage works again)", value=workers - storing)
        c = CounterMetricFamily("paris_jobs_created", "Jobs accepted by the API")
        c.add_metric([], values.get("jobs_created_total|", 0.0))
        yield c
        yield self._labelled("jobs_finished", "Jobs finished, by final status", "status", values)
        yield self._labelled("worker_stops", "Jobs a worker stopped running, by reason (cancelled, deleted, "
                             "fenced_out, timeout, engine_lost)", "reason", values)
        for name, doc in (("storage_faults", "Artifact writes or reads that failed with an OS error"),
                          ("jobs_requeued", "Jobs handed back to the queue because their files could not be stored")):
            counter = CounterMetricFamily(f"paris_{name}", doc)
            counter.add_metric([], values.get(f"{name}_total|", 0.0))
            yield counter
        yield self._labelled("expert_steps", "Denoising steps routed to each expert (expert load)", "expert", values)
        yield self._labelled("component_loads", "Weights brought to the device, by component (lazy first loads "
                             "and reloads after eviction)", "component", values)
        for name, doc in (("bytes_to_device", "Weight bytes moved onto the compute device"),
                          ("bytes_streamed", "Of those, bytes of experts streamed block by block"),
                          ("bytes_from_disk", "Weight bytes read from safetensors files")):
            counter = CounterMetricFamily(f"paris_{name}", doc)
            counter.add_metric([], values.get(f"{name}_total|", 0.0))
            yield counter
        yield self._histogram("paris_step_seconds", "Duration of one engine tick (one denoising step of every "
                              "active request)", values, STEP_BUCKETS)
        yield self._histogram("paris_job_seconds", "Job duration from start to stored MP4", values, JOB_BUCKETS)
