"""Prometheus metrics. Workers write counters and histograms into Redis (so every process on
every machine contributes); the API's /metrics reads them at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class RedisCollector:
    def __init__(self, store, heartbeat_ttl_s: float):
        self.store = store
        self.heartbeat_ttl_s = heartbeat_ttl_s

    def _histogram(self, name, doc, values, buckets):
        h = HistogramMetricFamily(name, doc)
        cum = [(str(b), values.get(f"{name}_bucket|{b}", 0.0)) for b in buckets]
        cum.append(("+Inf", values.get(f"{name}_count|", 0.0)))
        h.add_metric([], cum, values.get(f"{name}_sum|", 0.0))
        return h

    def collect(self):
        s = self.store
        try:
            values = s.metrics()
            depth = s.queue_depth()
            try:
                running = s.r.xpending(s.stream, "workers")["pending"]
            except Exception:
                running = 0
            workers = s.fresh_workers(self.heartbeat_ttl_s)
        except Exception:
            return
        yield GaugeMetricFamily("paris_queue_depth", "Jobs queued and not yet started", value=depth)
        g = GaugeMetricFamily("paris_jobs", "Jobs by current status (active ones)", labels=["status"])
        g.add_metric(["queued"], depth)
        g.add_metric(["in_progress"], running)
        yield g
        yield GaugeMetricFamily("paris_workers_alive", "Workers with a fresh heartbeat", value=workers)
        c = CounterMetricFamily("paris_jobs_created", "Jobs accepted by the API")
        c.add_metric([], values.get("jobs_created_total|", 0.0))
        yield c
        f = CounterMetricFamily("paris_jobs_finished", "Jobs finished, by final status", labels=["status"])
        for k, v in values.items():
            if k.startswith("jobs_finished_total|"):
                f.add_metric([k.split("|", 1)[1]], v)
        yield f
        e = CounterMetricFamily("paris_expert_steps", "Denoising steps routed to each expert (expert load)",
                                labels=["expert"])
        for k, v in values.items():
            if k.startswith("expert_steps_total|"):
                e.add_metric([k.split("|", 1)[1]], v)
        yield e
        loads = CounterMetricFamily("paris_component_loads", "Weights brought to the device, by component "
                                    "(lazy first loads and reloads after eviction)", labels=["component"])
        for k, v in values.items():
            if k.startswith("component_loads_total|"):
                loads.add_metric([k.split("|", 1)[1]], v)
        yield loads
        for name, doc in (("bytes_to_device", "Weight bytes moved onto the compute device"),
                          ("bytes_from_disk", "Weight bytes read from safetensors files")):
            counter = CounterMetricFamily(f"paris_{name}", doc)
            counter.add_metric([], values.get(f"{name}_total|", 0.0))
            yield counter
        yield self._histogram("paris_step_seconds", "Duration of one engine tick (one denoising step of every "
                              "active request)", values, STEP_BUCKETS)
        yield self._histogram("paris_job_seconds", "Job duration from start to stored MP4", values, JOB_BUCKETS)
