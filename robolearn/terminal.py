"""Key presses from a plain terminal (works over SSH, needs no display) and the episode keys.

A terminal reports key *presses* (with the keyboard's auto-repeat while a key is held), never key
releases, so "is this key held?" cannot be answered here; teleoperators that want held-key motion
keep a short hold window after each press (see `hardware.teleop.keyboard`).

One `KeyReader` serves everybody: the recorder drains `keys()` for episode keys, and a consumer
that needs some keys for itself (the keyboard teleoperator) claims them with `claim()`, so that
they are routed to its own queue and never reach `keys()`.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import string
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import IO

from robolearn.hal import EpisodeEvent

try:  # termios exists on POSIX only; elsewhere the reader is simply inactive
    import termios
except ImportError:  # pragma: no cover - Windows
    termios = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Named keys the decoder produces, besides single printable characters, "ctrl-<letter>" and
# "alt-<key>".
NAMED_KEYS = frozenset(
    {
        "up",
        "down",
        "left",
        "right",
        "esc",
        "enter",
        "space",
        "backspace",
        "tab",
        "backtab",
        "delete",
        "insert",
        "home",
        "end",
        "pageup",
        "pagedown",
        *(f"f{i}" for i in range(1, 13)),
    }
)
_PRINTABLE = frozenset(string.printable) - set(string.whitespace)
ESC = 0x1B
CTRL_C = "ctrl-c"

_CSI_FINAL = {"A": "up", "B": "down", "C": "right", "D": "left", "H": "home", "F": "end"}
_CSI_FINAL |= {"Z": "backtab", "P": "f1", "Q": "f2", "R": "f3", "S": "f4"}
_CSI_TILDE = {1: "home", 2: "insert", 3: "delete", 4: "end", 5: "pageup", 6: "pagedown"}
_CSI_TILDE |= {7: "home", 8: "end", 11: "f1", 12: "f2", 13: "f3", 14: "f4", 15: "f5"}
_CSI_TILDE |= {17: "f6", 18: "f7", 19: "f8", 20: "f9", 21: "f10", 23: "f11", 24: "f12"}
_SS3 = {"A": "up", "B": "down", "C": "right", "D": "left", "H": "home", "F": "end", "M": "enter"}
_SS3 |= {"P": "f1", "Q": "f2", "R": "f3", "S": "f4"}


def is_key_name(name: str) -> bool:
    """Whether `name` is a key the reader can produce (so a binding to it can ever fire)."""
    if name.startswith("alt-") and len(name) > 4:
        return is_key_name(name[4:])
    if name.startswith("ctrl-") and len(name) == 6:
        return name[5] in string.ascii_lowercase
    if len(name) == 1:
        return name in _PRINTABLE or (name.isprintable() and not name.isspace())
    return name in NAMED_KEYS


def check_key_names(names: Iterable[str], what: str) -> None:
    """Raise ValueError naming every key in `names` the reader can never produce."""
    bad = [n for n in names if not isinstance(n, str) or not is_key_name(n)]
    if bad:
        raise ValueError(
            f"{what}: unknown key name(s) {bad}; use a single character ('a', '1'), "
            f"'ctrl-<letter>', 'alt-<key>' or one of {sorted(NAMED_KEYS)}"
        )


class KeyDecoder:
    """Bytes from a terminal → key names, escape sequences included.

    A lone ESC byte is ambiguous (the Esc key, or the start of an arrow key's sequence), so it
    stays pending until more bytes come or the caller calls `flush()` after a short timeout.
    """

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> bool:
        """Whether an incomplete sequence waits for more bytes (call `flush()` if none come)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        keys, self._buf = _decode(self._buf, final=False)
        return keys

    def flush(self) -> list[str]:
        """Decode what is pending as if no more bytes will follow (a lone ESC is the Esc key)."""
        keys, self._buf = _decode(self._buf, final=True)
        return keys


def _decode(buf: bytes, *, final: bool) -> tuple[list[str], bytes]:
    keys: list[str] = []
    i = 0
    while i < len(buf):
        b = buf[i]
        if b == ESC:
            name, size = _escape(buf, i)
            if size == 0:  # incomplete sequence
                if not final:
                    break
                name, size = "esc", 1
            if name is not None:
                keys.append(name)
            i += size
        elif b < 0x80:
            name = _ascii_key(b)
            if name is not None:
                keys.append(name)
            i += 1
        else:
            size = _utf8_length(b)
            if i + size > len(buf):
                if not final:
                    break
                size = len(buf) - i  # a truncated character: drop it
            char = buf[i : i + size].decode("utf-8", errors="replace")
            if len(char) == 1 and char.isprintable() and char != "\ufffd":
                keys.append(char)
            i += size
    return keys, buf[i:]


def _escape(buf: bytes, i: int) -> tuple[str | None, int]:
    """(key or None for an unknown sequence, bytes used) for the ESC at `buf[i]`; size 0: wait."""
    if i + 1 >= len(buf):
        return None, 0
    nxt = buf[i + 1]
    if nxt == ord("["):
        j = i + 2
        while j < len(buf) and 0x20 <= buf[j] <= 0x3F:  # parameter and intermediate bytes
            j += 1
        if j >= len(buf):
            return None, 0
        if not 0x40 <= buf[j] <= 0x7E:  # not a CSI sequence after all: the Esc key, then the rest
            return "esc", 1
        params, final = buf[i + 2 : j].decode("ascii"), chr(buf[j])
        if final == "~":
            first = params.split(";")[0]
            name = _CSI_TILDE.get(int(first)) if first.isdigit() else None
        else:
            name = _CSI_FINAL.get(final)  # modifiers (ctrl-arrow "1;5C") are ignored
        if name is None:
            log.debug("ignoring unknown escape sequence %r", buf[i : j + 1])
        return name, j + 1 - i
    if nxt == ord("O"):
        if i + 2 >= len(buf):
            return None, 0
        name = _SS3.get(chr(buf[i + 2]))
        return name, 3
    if nxt == ESC:
        return "esc", 1
    inner = _ascii_key(nxt) if nxt < 0x80 else None
    if inner is None or inner == CTRL_C:
        return "esc", 1
    return f"alt-{inner}", 2


def _ascii_key(b: int) -> str | None:
    if b in (0x0D, 0x0A):
        return "enter"
    if b == 0x20:
        return "space"
    if b in (0x7F, 0x08):
        return "backspace"
    if b == 0x09:
        return "tab"
    if 0x01 <= b <= 0x1A:
        return f"ctrl-{chr(b + 0x60)}"
    if 0x21 <= b <= 0x7E:
        return chr(b)
    return None


def _utf8_length(lead: int) -> int:
    if lead >= 0xF0:
        return 4
    if lead >= 0xE0:
        return 3
    if lead >= 0xC0:
        return 2
    return 1  # a stray continuation byte


class KeyQueue:
    """Keys claimed from a `KeyReader` by one consumer; `drain()` takes them in order."""

    def __init__(self, names: frozenset[str], maxlen: int) -> None:
        self.names = names
        self._keys: deque[str] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def put(self, key: str) -> None:
        with self._lock:
            self._keys.append(key)

    def drain(self) -> list[str]:
        with self._lock:
            out = list(self._keys)
            self._keys.clear()
        return out


class KeyReader:
    """Reads key presses from a terminal in a background thread.

    Use it as a context manager: on entry the terminal goes into cbreak mode without echo or
    signal keys (so Ctrl-C, Ctrl-S and Esc arrive as bytes), on exit its settings are restored,
    also when the block raises. Ctrl-C is forwarded to this process as SIGINT, so it still stops
    a recording. Ctrl-Z is read as the key "ctrl-z" and does not suspend the process.

    `keys()` drains the presses since the last call, as names: single characters ("a", "1"),
    "up", "down", "left", "right", "esc", "enter", "space", "backspace", "tab", "ctrl-<letter>",
    "alt-<key>". A held key arrives as repeated presses (the keyboard's auto-repeat); releases
    are never seen, so there is no "is held" state.

    Where the file descriptor is not an interactive terminal (piped stdin, CI, a background
    job), the reader does not fail: `active` stays False, `reason` says why and `keys()` is
    always empty, so the caller can print a hint and go on.
    """

    def __init__(
        self,
        fd: int | IO[str] | IO[bytes] | None = None,
        *,
        esc_timeout: float = 0.05,
        max_queue: int = 256,
    ) -> None:
        if esc_timeout <= 0:
            raise ValueError(f"esc_timeout must be positive seconds, got {esc_timeout}")
        self.esc_timeout = float(esc_timeout)
        self._max_queue = int(max_queue)
        self._fd, self.reason = _terminal_fd(sys.stdin if fd is None else fd)
        self.active = False
        self._keys: deque[str] = deque(maxlen=self._max_queue)
        self._claims: dict[str, KeyQueue] = {}
        self._lock = threading.Lock()
        self._saved: list | None = None
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> KeyReader:
        """Put the terminal into key mode and start reading (a no-op when inactive or running)."""
        if self.active or self.reason is not None:
            if self.reason is not None:
                log.info("terminal keys are off: %s", self.reason)
            return self
        assert self._fd is not None and termios is not None
        self._saved = termios.tcgetattr(self._fd)
        mode = termios.tcgetattr(self._fd)
        mode[0] &= ~(termios.IXON | termios.ICRNL)  # iflag: Ctrl-S/Ctrl-Q are keys; Enter is \r
        mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)  # lflag
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        # Output flags stay as they are, so log lines printed meanwhile still end in CR-LF.
        termios.tcsetattr(self._fd, termios.TCSAFLUSH, mode)  # drop keys typed before now
        try:
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._run, name="KeyReader", daemon=True)
            self._thread.start()
        except BaseException:
            self._restore()
            raise
        self.active = True
        return self

    def close(self) -> None:
        """Stop reading and restore the terminal's settings (safe to call twice)."""
        try:
            if self._thread is not None:
                os.write(self._wake_w, b"x")
                self._thread.join(timeout=1.0)
                self._thread = None
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        finally:
            self._restore()
            self.active = False

    def _restore(self) -> None:
        if self._saved is not None and self._fd is not None and termios is not None:
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except termios.error as e:  # the terminal went away (SSH dropped): nothing to restore
                log.debug("could not restore terminal settings: %s", e)
            self._saved = None

    def __enter__(self) -> KeyReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ keys
    def keys(self) -> list[str]:
        """The key presses since the last call that nobody claimed, oldest first."""
        with self._lock:
            out = list(self._keys)
            self._keys.clear()
        return out

    def claim(self, names: Iterable[str]) -> KeyQueue:
        """Route these keys to a queue of their own: `keys()` will no longer return them."""
        wanted = frozenset(names)
        check_key_names(wanted, "claim")
        with self._lock:
            taken = sorted(wanted & set(self._claims))
            if taken:
                raise ValueError(f"keys {taken} are already claimed by another consumer")
            queue = KeyQueue(wanted, self._max_queue)
            self._claims.update(dict.fromkeys(wanted, queue))
        return queue

    def release(self, queue: KeyQueue) -> None:
        """Give a claimed queue's keys back to `keys()`."""
        with self._lock:
            self._claims = {k: q for k, q in self._claims.items() if q is not queue}

    def push(self, key: str) -> None:
        """Deliver one key as if it was pressed (the reader thread's path; also for tests)."""
        with self._lock:
            queue = self._claims.get(key)
            if queue is None:
                self._keys.append(key)
        if queue is not None:
            queue.put(key)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        decoder = KeyDecoder()
        fd = self._fd
        assert fd is not None
        while True:
            timeout = self.esc_timeout if decoder.pending else None
            try:
                ready, _, _ = select.select([fd, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            if fd in ready:
                try:
                    data = os.read(fd, 1024)
                except OSError as e:  # EIO: the terminal was closed (SSH dropped, pty master gone)
                    log.warning("terminal keys stopped: %s", e)
                    return
                if not data:
                    return
                keys = decoder.feed(data)
            else:
                keys = decoder.flush()
            for key in keys:
                if key == CTRL_C:
                    # Signal keys are off in key mode: forward Ctrl-C so it still interrupts.
                    os.kill(os.getpid(), signal.SIGINT)
                else:
                    self.push(key)


def _terminal_fd(source: int | IO[str] | IO[bytes]) -> tuple[int | None, str | None]:
    """(fd, None) for an interactive terminal we may take over, else (fd or None, why not)."""
    if termios is None:
        return None, "this platform has no termios (terminal keys need Linux or macOS)"
    if source is None:
        return None, "there is no standard input"
    try:
        fd = source if isinstance(source, int) else source.fileno()
    except (OSError, ValueError, AttributeError):
        return None, "standard input has no file descriptor (captured or closed)"
    if not os.isatty(fd):
        return fd, "standard input is not a terminal (piped, redirected or run by CI)"
    try:
        foreground = os.tcgetpgrp(fd)
    except OSError:
        foreground = None  # not our controlling terminal (e.g. a pty we opened): ours to use
    if foreground is not None and foreground != os.getpgrp():
        return fd, "this process runs in the background of its terminal"
    return fd, None


# ---------------------------------------------------------------------- episode keys
DEFAULT_EPISODE_KEYS: dict[str, EpisodeEvent] = {
    "right": EpisodeEvent.SAVE,
    "s": EpisodeEvent.SAVE,
    "left": EpisodeEvent.RERECORD,
    "r": EpisodeEvent.RERECORD,
    "d": EpisodeEvent.DISCARD,
    "backspace": EpisodeEvent.DISCARD,
    "space": EpisodeEvent.START,
    "enter": EpisodeEvent.START,
    "q": EpisodeEvent.QUIT,
    "esc": EpisodeEvent.QUIT,
}
_SYMBOLS = {"right": "→", "left": "←", "up": "↑", "down": "↓", "backspace": "⌫"}
_VERBS = {
    EpisodeEvent.SAVE: "save",
    EpisodeEvent.RERECORD: "re-record",
    EpisodeEvent.DISCARD: "discard",
    EpisodeEvent.START: "start",
    EpisodeEvent.QUIT: "quit",
}


def parse_event(value: EpisodeEvent | str, what: str) -> EpisodeEvent:
    """An EpisodeEvent from itself or its value ("save"), with an error naming the choices."""
    if isinstance(value, EpisodeEvent):
        return value
    try:
        return EpisodeEvent(str(value).lower())
    except ValueError:
        choices = [e.value for e in EpisodeEvent]
        raise ValueError(
            f"{what}: {value!r} is not an episode event; use one of {choices}"
        ) from None


class EpisodeKeys:
    """Terminal keys → episode events (save, re-record, discard, start, quit).

    Defaults: → or s save, ← or r re-record, d or Backspace discard, Space or Enter start,
    q or Esc quit. Letters also match in upper case (Caps Lock).
    """

    def __init__(self, bindings: Mapping[str, EpisodeEvent | str] | None = None) -> None:
        given = DEFAULT_EPISODE_KEYS if bindings is None else bindings
        check_key_names(given, "episode keys")
        self.bindings = {k: parse_event(v, f"episode key {k!r}") for k, v in given.items()}

    @property
    def keys(self) -> frozenset[str]:
        """The bound key names."""
        return frozenset(self.bindings)

    def events(self, keys: Iterable[str]) -> list[EpisodeEvent]:
        """The events these key presses ask for, in order; other keys are ignored."""
        out = []
        for key in keys:
            event = self.bindings.get(key)
            if event is None and len(key) == 1:
                event = self.bindings.get(key.lower())
            if event is not None:
                out.append(event)
        return out

    @property
    def help(self) -> str:
        """One status line: "→/s save  ←/r re-record  d/⌫ discard  space/enter start  q/esc quit"."""
        parts = []
        for event, verb in _VERBS.items():
            names = [_SYMBOLS.get(k, k) for k, e in self.bindings.items() if e is event]
            if names:
                parts.append(f"{'/'.join(names)} {verb}")
        return "  ".join(parts)
