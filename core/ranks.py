"""What a run's ranks and the ``lorarec train`` above them share through the run directory
(``RUN_DIR/ranks``, on storage every host shares) and the environment."""

from __future__ import annotations

HEARTBEAT_ENV = "LORAREC_HEARTBEAT_SECONDS"
"""Seconds between a rank's heartbeats, and between its looks for :data:`STOP_FILE` (set by
``lorarec train`` from ``launch.heartbeat_timeout``)."""

STOP_FILE = "stop"
"""``RUN_DIR/ranks/stop``: written by ``lorarec train`` to end the job on every host."""
