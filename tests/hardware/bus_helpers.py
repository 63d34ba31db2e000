"""Connecting lerobot's motor buses to the emulators on a busy test machine."""

from __future__ import annotations

import contextlib
import time
from typing import Any


def connect_bus(device: Any, tries: int = 3, **kwargs: Any) -> None:
    """`device.connect(**kwargs)` for a lerobot motor bus or a lerobot robot/teleoperator
    built on one, tried again when the handshake looks stalled rather than faulty.

    lerobot's handshake pings each motor, then reads every model number and firmware version,
    each once (no retry) with a 34-50 ms timeout. When the test machine stalls the emulator's
    process for longer than that (other jobs on 2 shared cores), either every ping times out
    at once or one of the later reads gets no status packet (CI, stop 19: the firmware read of
    motor 3). A retry tells that apart from a real fault, which fails every try: a motor
    missing from the bus or of the wrong model is still refused.
    """
    bus = getattr(device, "bus", device)
    for attempt in range(tries):
        try:
            device.connect(**kwargs)
            return
        except (RuntimeError, ConnectionError) as e:
            if not _stalled(e) or attempt == tries - 1:
                raise
            with contextlib.suppress(Exception):
                bus.port_handler.closePort()
            time.sleep(0.05)


def _stalled(error: BaseException) -> bool:
    """The error, or one it was raised from, is what a stalled emulator looks like."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen)
        if "Full found motor list (id: model_number):\n{}" in text:
            return True  # every ping of the handshake timed out at once
        if "There is no status packet" in text:
            return True  # one read timed out
        seen = seen.__cause__ or seen.__context__
    return False


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
