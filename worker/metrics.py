"""The worker's Prometheus metrics, in one module-level registry.

`REGISTRY` is what the worker's health server (worker/health.py) serves at /metrics; other
worker modules register their metrics on it (`Counter(..., registry=REGISTRY)`). Gauges that
mirror live state are read from the bound host at scrape time by `HostCollector`, so no code
has to keep them in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client import Metric

REGISTRY = CollectorRegistry(auto_describe=True)


class HostCollector(Collector):
    """Gauges read from the live EngineHost at scrape time."""

    def __init__(self, host: Any):
        self.host = host

    def collect(self) -> Iterable[Metric]:
        host = self.host
        model = host.engine.info.model
        g = GaugeMetricFamily(
            "genq_worker_jobs_in_flight", "Jobs this worker is running now", labels=["model"]
        )
        g.add_metric([model], host.in_flight)
        yield g
        g = GaugeMetricFamily(
            "genq_worker_ready",
            "1 while the worker takes jobs (engine up, consuming, not draining)",
            labels=["model"],
        )
        g.add_metric([model], 1.0 if host.ready else 0.0)
        yield g


_bound: HostCollector | None = None


def bind_host(host: Any) -> None:
    """Expose `host`'s live gauges in REGISTRY (once per process; a second call rebinds)."""
    global _bound
    if _bound is not None:
        REGISTRY.unregister(_bound)
    _bound = HostCollector(host)
    REGISTRY.register(_bound)
