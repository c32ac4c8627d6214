"""Flower's /metrics behind the same basic auth as the rest of Flower.

Flower checks `--basic-auth` on its pages and its API, but serves Prometheus's /metrics to anyone
(it lists every task name, worker and count). `blip2-jobs flower` calls `protect_metrics()` before
starting Flower, so with credentials set nothing but /healthcheck ("OK") answers without them.
A Prometheus scraper sends the same credentials (`basic_auth` in its scrape config).
"""


def protect_metrics() -> None:
    """Make Flower's Metrics handler require the logged-in user, like its other handlers."""
    import tornado.web
    from flower.views import monitor

    if getattr(monitor.Metrics.get, "_blip2_protected", False):
        return
    protected = tornado.web.authenticated(monitor.Metrics.get)
    protected._blip2_protected = True  # type: ignore[attr-defined]
    monitor.Metrics.get = protected
