"""The HAL conformance suite: the behaviour every Robot implementation must show.

Use it from a test module of your robot::

    from robolearn.testing.conformance import RobotConformance

    class TestMyArm(RobotConformance):
        @pytest.fixture
        def robot(self):
            with MyArm(...) as r:
                yield r

Every test method then runs against your robot. It needs pytest (the `test` extra).
"""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.hal import ActionError, DeviceError, Observation, Robot
from robolearn.spec import ACTION_REPRESENTATIONS, FeatureSpec


def _hold(robot: Robot, key: str) -> np.ndarray:
    """An action that asks the robot to stay where it is, in representation `key`."""
    feature = robot.spec[key]
    if feature.representation == "ee_delta":
        hold = np.zeros(feature.shape, dtype=np.float64)
        hold[-1] = feature.high[-1] if feature.high is not None else 1.0  # gripper open
        return hold
    obs = robot.observe()
    state = next(
        (obs[k] for k in robot.spec.keys_of("state") if obs[k].shape == feature.shape), None
    )
    if state is None:
        low = np.asarray(feature.low if feature.low is not None else np.zeros(feature.size))
        high = np.asarray(feature.high if feature.high is not None else np.zeros(feature.size))
        return ((low + high) / 2).reshape(feature.shape)
    return np.asarray(state, dtype=np.float64)


def _tick(robot: Robot, seconds: float = 0.05) -> None:
    robot.clock.sleep_until(robot.clock.now() + seconds)


class RobotConformance:
    """Subclass it and provide a connected `robot` fixture."""

    @pytest.fixture
    def robot(self) -> Robot:  # pragma: no cover - every subclass provides it
        raise NotImplementedError("provide a connected `robot` fixture")

    def test_spec_is_consistent(self, robot: Robot) -> None:
        spec = robot.spec
        assert isinstance(spec, FeatureSpec)
        assert FeatureSpec.from_dict(spec.to_dict()) == spec
        assert spec.action_keys, "a robot takes at least one action"
        assert spec.observation_keys, "a robot observes something"
        for key in spec.action_keys:
            feature = spec[key]
            assert feature.representation in ACTION_REPRESENTATIONS, (
                f"{key} names no representation"
            )
            assert feature.low is not None and feature.high is not None, f"{key} has no limits"
        for key in spec.image_keys:
            assert spec[key].dtype == "uint8"

    def test_spec_can_create_an_episode_store(self, robot: Robot, tmp_path) -> None:
        store = EpisodeStore.create(tmp_path / "conformance.zarr", robot.spec, fps=10)
        store.close()
        assert EpisodeStore.open(tmp_path / "conformance.zarr").spec == robot.spec

    def test_observations_match_the_spec(self, robot: Robot) -> None:
        obs = robot.observe()
        assert isinstance(obs, Observation)
        assert set(obs.values) == set(robot.spec.observation_keys)
        assert set(obs.capture_times) == set(obs.values)
        for key, value in obs.values.items():
            feature = robot.spec[key]
            assert value.shape == feature.shape, key
            assert value.dtype == np.dtype(feature.dtype), key
            if value.dtype.kind == "f":
                assert np.isfinite(value).all(), key

    def test_capture_times_increase(self, robot: Robot) -> None:
        first = robot.observe()
        _tick(robot)
        second = robot.observe()
        for key in first.capture_times:
            assert second.capture_times[key] > first.capture_times[key], key
        assert first.timestamp <= robot.clock.now()

    def test_every_action_representation_is_accepted(self, robot: Robot) -> None:
        for key in robot.spec.action_keys:
            sent = robot.act({key: _hold(robot, key)})
            assert key in sent
            for name, value in sent.items():
                feature = robot.spec[name]
                assert value.shape == feature.shape and value.dtype == np.dtype(feature.dtype)
                assert np.isfinite(value).all()
            _tick(robot)

    def test_wrong_shape_nan_and_unknown_keys_are_refused(self, robot: Robot) -> None:
        key = robot.spec.action_keys[0]
        feature = robot.spec[key]
        with pytest.raises(ActionError, match="shape"):
            robot.act({key: np.zeros(feature.size + 1)})
        bad = _hold(robot, key).astype(np.float64)
        bad.reshape(-1)[0] = np.nan
        with pytest.raises(ActionError, match="NaN"):
            robot.act({key: bad})
        with pytest.raises(ActionError, match="no action"):
            robot.act({"warp_drive": np.zeros(3)})
        with pytest.raises(ActionError, match="exactly one"):
            robot.act({})

    def test_out_of_limit_actions_are_handled_as_the_spec_says(self, robot: Robot) -> None:
        for key in robot.spec.action_keys:
            feature = robot.spec[key]
            far = np.asarray(feature.high, dtype=np.float64) + 10.0 * (
                np.abs(np.asarray(feature.high)) + 1.0
            )
            far = far.reshape(feature.shape)
            if feature.on_limit == "reject":
                with pytest.raises(ActionError, match="out of limits"):
                    robot.act({key: far})
            else:
                sent = robot.act({key: far})
                assert (sent[key] <= np.asarray(feature.high, dtype=sent[key].dtype) + 1e-6).all()
                # put it back where it was so the next check starts from a sane pose
                robot.act({key: _hold(robot, key)})
            _tick(robot)

    def test_a_disconnected_robot_refuses_to_work(self, robot: Robot) -> None:
        robot.disconnect()
        assert not robot.is_connected
        with pytest.raises(DeviceError, match="not connected"):
            robot.observe()
        with pytest.raises(DeviceError, match="not connected"):
            robot.act(
                {robot.spec.action_keys[0]: np.zeros(robot.spec[robot.spec.action_keys[0]].shape)}
            )
        robot.connect()
        assert robot.observe() is not None
