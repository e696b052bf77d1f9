"""The interpreter, set up for one latency-critical event loop beside background threads.

Requests are served by one event loop; span export, the audit writer and the
NVML sampler run on threads and share the interpreter lock with it. Two of
CPython's defaults suit batch programs rather than a proxy:

- A thread that holds the lock keeps it for up to `sys.getswitchinterval()`
  (5 ms) after the loop asks for it, so each request that arrives while a
  batch of spans is being encoded waits up to that long, once per wake-up.
- A full collection walks every tracked object, start-up's included (about
  100,000: modules, the config, the metric families, the OpenTelemetry SDK),
  and stalls the loop for about 30 ms each time.

Both are process-wide, so they are set by the command that owns the process
(`sidecar run`), never by a Sidecar built inside another program or a test.
"""

from __future__ import annotations

import gc
import logging
import sys

from sidecar.config import RuntimeConfig

logger = logging.getLogger(__name__)


def tune_interpreter(config: RuntimeConfig) -> None:
    """Shorten how long a background thread can keep the event loop waiting for the lock."""
    sys.setswitchinterval(config.switch_interval)


def settle_heap(config: RuntimeConfig) -> int:
    """Collect start-up's garbage, then freeze what is left alive; returns how many objects were frozen.

    Called once the sidecar is serving. Frozen objects are still freed when
    their last reference goes; only a cycle among them that becomes garbage
    later (a component replaced by a reload) stays, once, for the process's life.
    """
    if not config.gc_freeze:
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("start-up heap frozen", extra={"objects": frozen})
    return frozen
