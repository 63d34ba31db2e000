"""KeyReader on a real pseudo-terminal, the key decoder, and the episode keys."""

from __future__ import annotations

import os
import signal
import termios
import time
from collections.abc import Iterator

import pytest

from robolearn.hal import EpisodeEvent
from robolearn.terminal import EpisodeKeys, KeyDecoder, KeyReader


@pytest.fixture
def pty_fds() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        os.close(fd)


def wait_keys(reader: KeyReader, n: int, timeout: float = 3.0) -> list[str]:
    keys: list[str] = []
    deadline = time.monotonic() + timeout
    while len(keys) < n and time.monotonic() < deadline:
        keys += reader.keys()
        time.sleep(0.005)
    return keys


def test_reads_arrows_letters_enter_and_esc_from_a_pty(pty_fds: tuple[int, int]) -> None:
    master, slave = pty_fds
    with KeyReader(slave) as reader:
        assert reader.active and reader.reason is None
        os.write(master, b"\x1b[A\x1b[B\x1b[C\x1b[Dqs\r \x7f")
        assert wait_keys(reader, 9) == [
            *("up", "down", "right", "left"),
            *("q", "s", "enter", "space", "backspace"),
        ]
        os.write(master, b"\x1b")  # a lone Esc: decided after the escape timeout
        assert wait_keys(reader, 1) == ["esc"]
        os.write(master, b"\x1bOA")  # arrows in application cursor mode
        assert wait_keys(reader, 1) == ["up"]


def test_terminal_mode_is_set_inside_and_restored_after(pty_fds: tuple[int, int]) -> None:
    _, slave = pty_fds
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ECHO and before[3] & termios.ICANON
    with KeyReader(slave):
        inside = termios.tcgetattr(slave)
        assert not inside[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
    assert termios.tcgetattr(slave) == before


def test_terminal_is_restored_when_the_block_raises(pty_fds: tuple[int, int]) -> None:
    _, slave = pty_fds
    before = termios.tcgetattr(slave)

    def fail_inside() -> None:
        with KeyReader(slave):
            assert termios.tcgetattr(slave) != before
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert termios.tcgetattr(slave) == before


def test_a_pipe_makes_an_inactive_reader_that_says_why() -> None:
    r, w = os.pipe()
    try:
        with KeyReader(r) as reader:
            os.write(w, b"abc")
            time.sleep(0.05)
            assert not reader.active
            assert "not a terminal" in (reader.reason or "")
            assert reader.keys() == []
    finally:
        os.close(r)
        os.close(w)


def test_a_stdin_without_file_descriptor_is_inactive() -> None:
    class Captured:
        def fileno(self) -> int:
            raise OSError("redirected")

    reader = KeyReader(Captured())  # type: ignore[arg-type]
    with reader:
        assert not reader.active and reader.reason is not None


def test_ctrl_c_interrupts_the_main_thread(pty_fds: tuple[int, int]) -> None:
    master, slave = pty_fds
    before = termios.tcgetattr(slave)

    def press_ctrl_c_and_wait() -> None:
        with KeyReader(slave):
            os.write(master, b"\x03")
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                time.sleep(0.01)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            press_ctrl_c_and_wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert termios.tcgetattr(slave) == before


def test_claimed_keys_go_to_their_queue_and_the_rest_to_keys(pty_fds: tuple[int, int]) -> None:
    master, slave = pty_fds
    with KeyReader(slave) as reader:
        queue = reader.claim({"i", "k"})
        os.write(master, b"ixk\x1b[C")
        assert wait_keys(reader, 2) == ["x", "right"]
        assert queue.drain() == ["i", "k"]
        with pytest.raises(ValueError, match="already claimed"):
            reader.claim({"k"})
        reader.release(queue)
        reader.push("i")
        assert reader.keys() == ["i"]
    with pytest.raises(ValueError, match="unknown key"):
        reader.claim({"arrow-up"})


def test_decoder_waits_for_the_rest_of_a_split_sequence() -> None:
    decoder = KeyDecoder()
    assert decoder.feed(b"\x1b") == []
    assert decoder.pending
    assert decoder.feed(b"[") == []
    assert decoder.feed(b"C") == ["right"]
    assert decoder.feed(b"\xc3") == []  # half of "é"
    assert decoder.feed(b"\xa9") == ["é"]
    assert decoder.feed(b"\x1b[1;5D\x1b[3~\x1bx") == ["left", "delete", "alt-x"]
    assert decoder.feed(b"\x1b[999~\x01") == ["ctrl-a"]  # unknown sequences are dropped
    assert decoder.feed(b"\x1b\x1b") == ["esc"]
    assert decoder.flush() == ["esc"]
    assert not decoder.pending


def test_episode_keys_map_to_events() -> None:
    keys = EpisodeKeys()
    presses = ["right", "s", "left", "r", "d", "backspace", "space", "enter", "q", "esc", "x"]
    E = EpisodeEvent
    assert keys.events(presses) == [
        *(E.SAVE, E.SAVE, E.RERECORD, E.RERECORD, E.DISCARD, E.DISCARD),
        *(E.START, E.START, E.QUIT, E.QUIT),
    ]
    assert keys.events(["S", "Q"]) == [E.SAVE, E.QUIT]  # Caps Lock
    assert keys.help == "→/s save  ←/r re-record  d/⌫ discard  space/enter start  q/esc quit"


def test_episode_key_bindings_are_checked() -> None:
    assert EpisodeKeys({"n": "save"}).events(["n", "s"]) == [EpisodeEvent.SAVE]
    with pytest.raises(ValueError, match="unknown key"):
        EpisodeKeys({"rightarrow": EpisodeEvent.SAVE})
    with pytest.raises(ValueError, match="not an episode event"):
        EpisodeKeys({"n": "keep"})
