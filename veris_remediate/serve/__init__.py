"""``veris-remediate serve``: the webhook receiver for Alertmanager, Grafana, Sentinel and
generic alerts, with a durable queue and bounded workers.

    auth.py    the listen address, the bearer token and its constant-time check
    intake.py  a posted payload → one queue row per firing incident; resolved alerts
    worker.py  the worker pool: claim, remediate in a thread, finish; recovery
    app.py     the aiohttp routes and the process's life (signals, drain)
"""

from __future__ import annotations

from .app import run_server

__all__ = ["run_server"]
