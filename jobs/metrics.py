"""What the API's and the workers' Prometheus endpoints have in common: labels and exposition.

The metrics themselves live where they change: HTTP requests and the jobs table in api/metrics.py,
batches, model loads and job runs in worker/metrics.py. Both expose them with prometheus-client's
own text format; where several processes record (jobs/metrics_dir.py) all of them are exposed.
"""

import logging

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from blip2.registry import Registry
from jobs.metrics_dir import metrics_are_shared
from jobs.queues import Lane, queue_for_model

log = logging.getLogger(__name__)

# A job's model as a label: a registry name, or this for anything else (a tenant's trained model,
# whose name is that tenant's business, or an ad hoc hub id, of which there is no end); its queue too.
OTHER_MODEL = "other"


def model_label(registry: Registry, name: str) -> str:
    """The `model` label of a job on `name`: bounded, and never another tenant's model name."""
    return name if name in {spec.name for spec in registry.specs()} else OTHER_MODEL


def queue_label(registry: Registry, queue: str) -> str:
    """The `queue` label of a job on `queue`: a registry model's queue or a long-job lane, else
    `other` (a trained model's own queue names its tenant and model; a hub id's has no end)."""
    known = {queue_for_model(spec.name) for spec in registry.specs()} | {lane.value for lane in Lane}
    return queue if queue in known else OTHER_MODEL


def exposition(recorded: CollectorRegistry, *live: Collector) -> bytes:
    """The text format of what this process recorded (of what every process recorded, where they share
    a directory), followed by collectors that read their values at scrape time."""
    registry = CollectorRegistry(auto_describe=True)
    if metrics_are_shared():
        MultiProcessCollector(registry)
    else:
        registry.register(recorded)  # a registry collects like a collector
    for collector in live:
        registry.register(collector)
    return generate_latest(registry)


def serve_shared_metrics(host: str, port: int) -> None:
    """Serve every process's metrics from the shared directory on host:port, from a daemon thread of this
    process, for as long as it lives (raises OSError if the port is taken)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
