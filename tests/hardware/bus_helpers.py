"""Connecting lerobot's motor buses to the emulators on a busy test machine."""

from __future__ import annotations

import contextlib
import time
from typing import Any


def connect_bus(bus: Any, tries: int = 3) -> None:
    """`bus.connect()`, tried again when the handshake finds no motor at all.

    lerobot's handshake pings each motor once with a few-millisecond timeout. When the test
    machine stalls the emulator's process for longer than that (other jobs on 2 shared cores),
    every ping of that handshake times out at once. A retry tells that apart from a real fault,
    which fails every try: a motor missing from the bus or of the wrong model is still refused.
    """
    for attempt in range(tries):
        try:
            bus.connect()
            return
        except (RuntimeError, ConnectionError) as e:
            stalled = "Full found motor list (id: model_number):\n{}" in str(e)
            if not stalled or attempt == tries - 1:
                raise
            with contextlib.suppress(Exception):
                bus.port_handler.closePort()
            time.sleep(0.05)


def with_retries(bus: Any, tries: int = 2) -> Any:
    """Give this bus's `read`, `write`, `sync_read` and `sync_write` a default of `tries`
    retries (lerobot's default is none), as lerobot's own robots pass for their reads.

    For the same reason as above: a test machine that stalls the emulator's process past the
    driver's timeout loses a status packet a real bus would have delivered. Tests of the fault
    handling itself pass `num_retry=0` explicitly and see every fault.
    """
    for name in ("read", "write", "sync_read", "sync_write"):
        method = getattr(bus, name)

        def retried(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            kwargs.setdefault("num_retry", tries)
            return _method(*args, **kwargs)

        setattr(bus, name, retried)
    return bus
