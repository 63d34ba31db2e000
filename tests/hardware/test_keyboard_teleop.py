"""KeyboardTeleop: directions, hold windows, gripper toggles, limits, and sharing one KeyReader."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hardware.teleop.keyboard import KeyboardTeleop
from robolearn.hal import DeviceError, EpisodeEvent
from robolearn.spec import Feature
from robolearn.terminal import EpisodeKeys, KeyReader

STEP, ROT, HOLD = 0.01, 0.1, 0.15


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)


@pytest.fixture
def pty_fds() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        os.close(fd)


@pytest.fixture
def reader(pty_fds: tuple[int, int]) -> KeyReader:
    return KeyReader(pty_fds[1])  # a terminal, not started: keys come through push()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def teleop(reader: KeyReader, clock: FakeClock) -> Iterator[KeyboardTeleop]:
    t = KeyboardTeleop(reader, translation_step=STEP, rotation_step=ROT, hold=HOLD, clock=clock)
    with t:
        yield t


def ee(teleop: KeyboardTeleop) -> np.ndarray:
    (key, value), *_ = teleop.read().items()
    assert key == "action.ee"
    assert value.dtype == np.float32 and value.shape == (7,)
    return value


@pytest.mark.parametrize(
    ("key", "index", "size"),
    [
        ("i", 0, STEP),
        ("k", 0, -STEP),
        ("j", 1, STEP),
        ("l", 1, -STEP),
        ("u", 2, STEP),
        ("o", 2, -STEP),
        ("1", 3, ROT),
        ("2", 3, -ROT),
        ("3", 4, ROT),
        ("4", 4, -ROT),
        ("5", 5, ROT),
        ("6", 5, -ROT),
    ],
)
def test_each_key_moves_one_axis_by_one_step(
    teleop: KeyboardTeleop, reader: KeyReader, key: str, index: int, size: float
) -> None:
    reader.push(key)
    expected = np.zeros(7, dtype=np.float32)
    expected[index], expected[6] = size, 1.0
    np.testing.assert_allclose(ee(teleop), expected, rtol=1e-6)


def test_no_keys_no_motion_and_gripper_open(teleop: KeyboardTeleop) -> None:
    np.testing.assert_array_equal(ee(teleop), [0, 0, 0, 0, 0, 0, 1])


def test_motion_lasts_the_hold_window_and_repeats_extend_it(
    teleop: KeyboardTeleop, reader: KeyReader, clock: FakeClock
) -> None:
    reader.push("i")
    assert ee(teleop)[0] == pytest.approx(STEP)
    clock.t += 0.1
    assert ee(teleop)[0] == pytest.approx(STEP)  # still inside the window
    reader.push("i")  # auto-repeat, seen at this tick
    assert ee(teleop)[0] == pytest.approx(STEP)
    clock.t += 0.1
    assert ee(teleop)[0] == pytest.approx(STEP)  # 0.2 s after the first press, 0.1 after the repeat
    clock.t += 0.06
    assert ee(teleop)[0] == 0.0  # 0.16 s after the last press: stopped
    clock.t += 1.0
    assert ee(teleop)[0] == 0.0


def test_opposite_keys_cancel_and_different_axes_combine(
    teleop: KeyboardTeleop, reader: KeyReader
) -> None:
    for key in ("i", "k", "j", "5"):
        reader.push(key)
    np.testing.assert_allclose(ee(teleop), [0, STEP, 0, 0, 0, ROT, 1], rtol=1e-6)


def test_gripper_toggles_once_per_press_not_per_auto_repeat(
    teleop: KeyboardTeleop, reader: KeyReader, clock: FakeClock
) -> None:
    reader.push("g")
    assert ee(teleop)[6] == 0.0  # closed
    for _ in range(5):  # held: repeats every 40 ms
        clock.t += 0.04
        reader.push("g")
        assert ee(teleop)[6] == 0.0
    clock.t += 0.5  # released, then pressed again
    reader.push("g")
    assert ee(teleop)[6] == 1.0
    assert not ee(teleop)[:6].any()  # the gripper key moves nothing


def test_reset_stops_motion_drops_stale_keys_and_opens_the_gripper(
    teleop: KeyboardTeleop, reader: KeyReader
) -> None:
    reader.push("i")
    reader.push("g")
    assert ee(teleop)[0] > 0 and ee(teleop)[6] == 0.0
    reader.push("j")  # pressed during the reset: forgotten
    teleop.reset(seed=3)
    np.testing.assert_array_equal(ee(teleop), [0, 0, 0, 0, 0, 0, 1])


def test_steps_and_gripper_follow_the_robots_limits(reader: KeyReader, clock: FakeClock) -> None:
    limits = Feature(
        (7,),
        "float32",
        "action",
        low=[-0.004, -0.004, -0.004, -0.3, -0.3, -0.3, 0.2],
        high=[0.004, 0.004, 0.004, 0.3, 0.3, 0.3, 0.9],
        representation="ee_delta",
    )
    teleop = KeyboardTeleop(
        reader, translation_step=0.05, rotation_step=0.1, limits=limits, clock=clock
    )
    with teleop:
        reader.push("k")
        reader.push("5")
        action = ee(teleop)
        np.testing.assert_allclose(action, [-0.004, 0, 0, 0, 0, 0.1, 0.9], rtol=1e-6)
        assert (action >= np.float32(limits.low)).all() and (
            action <= np.float32(limits.high)
        ).all()
        reader.push("g")
        assert ee(teleop)[6] == pytest.approx(0.2)


def test_episode_keys_pass_through_untouched(teleop: KeyboardTeleop, reader: KeyReader) -> None:
    for key in ("s", "i", "right", "d", "j", "q", "x", "g"):
        reader.push(key)
    assert EpisodeKeys().events(reader.keys()) == [
        EpisodeEvent.SAVE,
        EpisodeEvent.SAVE,
        EpisodeEvent.DISCARD,
        EpisodeEvent.QUIT,
    ]
    np.testing.assert_allclose(ee(teleop), [STEP, STEP, 0, 0, 0, 0, 0], rtol=1e-6)


def test_one_reader_on_a_real_terminal_feeds_both(
    pty_fds: tuple[int, int], clock: FakeClock
) -> None:
    master, slave = pty_fds
    with (
        KeyReader(slave) as reader,
        KeyboardTeleop(reader, translation_step=STEP, clock=clock) as teleop,
    ):
        os.write(master, b"I\x1b[Cs")  # Caps Lock "I" still moves
        keys: list[str] = []
        deadline = time.monotonic() + 3.0
        while len(keys) < 2 and time.monotonic() < deadline:
            keys += reader.keys()
            time.sleep(0.005)
        assert keys == ["right", "s"]
        assert ee(teleop)[0] == pytest.approx(STEP)
    reader.push("i")  # disconnected: the reader has its keys back
    assert reader.keys() == ["i"]


def test_help_names_the_layout(teleop: KeyboardTeleop) -> None:
    assert teleop.help == "i/k ±x  j/l ±y  u/o ±z  1/2 ±rx  3/4 ±ry  5/6 ±rz  g gripper"


def test_needs_a_terminal_and_a_connection(clock: FakeClock, reader: KeyReader) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(DeviceError, match="interactive terminal"):
            KeyboardTeleop(KeyReader(r)).connect()
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(DeviceError, match="not connected"):
        KeyboardTeleop(reader, clock=clock).read()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"translation_step": -0.01}, "translation_step"),
        ({"rotation_step": float("nan")}, "rotation_step"),
        ({"hold": -1.0}, "hold"),
        ({"hold": 0.0}, "hold"),
        ({"layout": {"arrow_up": "+x"}}, "unknown key"),
        ({"layout": {"i": "+w"}}, "'\\+w' is not one of"),
        ({"layout": {"s": "+x"}}, "episode keys"),
        ({"layout": {"S": "+x"}}, "episode keys"),
        ({"gripper_key": "q"}, "episode keys"),
        ({"gripper_key": "i"}, "also moves"),
    ],
)
def test_bad_configuration_is_refused(
    reader: KeyReader, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        KeyboardTeleop(reader, **kwargs)


def test_limits_of_another_representation_are_refused(reader: KeyReader) -> None:
    joints = Feature((7,), "float32", "action", representation="joint_position")
    with pytest.raises(ValueError, match="joint_position"):
        KeyboardTeleop(reader, limits=joints)
