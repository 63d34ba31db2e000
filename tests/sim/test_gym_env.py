"""The gymnasium wrapper: registered ids, spaces that match the spec, full episodes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

import sim.gym_env  # noqa: F401 - registers the ids
from sim.robot import CameraConfig


def test_pick_place_runs_a_full_episode_with_the_expert_and_succeeds() -> None:
    env = gym.make("robolearn/PickPlace-v0")
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    inner = env.unwrapped
    expert = inner.task.expert(inner.robot, np.random.default_rng(0))
    total, steps = 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        action = expert.read(inner.robot.observe())["action.ee"]
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        steps += 1
    assert terminated and info["is_success"] and total == 1.0
    assert steps < inner.task.max_steps
    env.close()


def test_random_actions_truncate_at_the_time_limit() -> None:
    env = gym.make("robolearn/Reach-v0")
    env.reset(seed=0)
    env.action_space.seed(0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample() * 0)
        steps += 1
        done = terminated or truncated
    assert truncated and steps == env.unwrapped.task.max_steps
    env.close()


def test_gymnasium_env_checker_passes_with_a_camera() -> None:
    env = gym.make(
        "robolearn/Reach-v0",
        cameras=[CameraConfig("top", width=32, height=32)],
        render_mode="rgb_array",
    )
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=1)
    assert obs["top"].shape == (32, 32, 3) and obs["top"].dtype == np.uint8
    assert env.render().shape == (240, 320, 3)
    env.close()
