"""Camera depth: off by default; on, metric z-depth in metres that survives an episode store."""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.data.stats import compute_stats
from robolearn.data.store import EpisodeStore
from sim.robot import EE_KEY, CameraConfig, PyBulletRobot, linearize_depth
from sim.world import PhysicsConfig

# A top-down camera 1 m above the table, well clear of the arm (which stands at the origin and
# reaches along +x), looking at a patch of bare table around (0, 0.6).
EYE_HEIGHT = 1.0
TOP = CameraConfig(
    "top",
    width=40,
    height=32,
    fov=30.0,
    eye=(0.0, 0.6, EYE_HEIGHT),
    target=(0.0, 0.6, 0.0),
    up=(1.0, 0.0, 0.0),
    depth=True,
)

HALF = 0.05  # a 10 cm cube on the table under the camera: its top face 0.9 m from the camera
CENTRE = np.s_[14:18, 18:22]  # pixels in the middle of the image that see the cube's top face


def add_box(robot: PyBulletRobot) -> None:
    client = robot.world.client
    shape = client.createCollisionShape(client.GEOM_BOX, halfExtents=[HALF] * 3)
    visual = client.createVisualShape(client.GEOM_BOX, halfExtents=[HALF] * 3)
    client.createMultiBody(0, shape, visual, basePosition=[0.0, 0.6, HALF])


def egl_robot() -> PyBulletRobot:
    robot = PyBulletRobot("panda", cameras=[TOP], physics=PhysicsConfig(renderer="egl"))
    try:
        robot.connect()
    except RuntimeError as e:
        pytest.skip(str(e))
    return robot


def test_depth_is_off_by_default() -> None:
    with PyBulletRobot("panda", cameras=[CameraConfig("top", width=16, height=16)]) as robot:
        assert "top_depth" not in robot.spec
        assert set(robot.observe().values) == {"state", "ee_pose", "top"}


def test_depth_feature_in_spec_and_observation() -> None:
    with PyBulletRobot("panda", cameras=[TOP], seed=0) as robot:
        feature = robot.spec["top_depth"]
        assert (feature.shape, feature.dtype, feature.kind) == ((32, 40, 1), "float32", "state")
        obs = robot.observe()
        depth = obs["top_depth"]
        assert depth.shape == (32, 40, 1) and depth.dtype == np.float32
        assert obs.capture_times["top_depth"] == obs.capture_times["top"]
        assert obs["top"].shape == (32, 40, 3)  # the RGB frame is unchanged


def test_table_and_a_box_measure_their_distance() -> None:
    """z-depth is constant over a plane facing the camera: the table reads 1 m, a box top 0.9 m."""
    with PyBulletRobot("panda", cameras=[TOP], seed=0) as robot:
        depth = robot.observe()["top_depth"][..., 0]
        np.testing.assert_allclose(depth, EYE_HEIGHT, atol=0.002)

        add_box(robot)
        depth = robot.observe()["top_depth"][..., 0]
        np.testing.assert_allclose(depth[CENTRE], EYE_HEIGHT - 2 * HALF, atol=0.002)
        corners = depth[[0, 0, -1, -1], [0, -1, 0, -1]]  # the corners still see the table
        np.testing.assert_allclose(corners, EYE_HEIGHT, atol=0.002)


def test_nothing_in_view_reads_far() -> None:
    sky = CameraConfig("sky", width=8, height=8, eye=(0, 0, 2.0), target=(0, 0, 3.0), depth=True)
    with PyBulletRobot("panda", cameras=[sky]) as robot:
        np.testing.assert_allclose(robot.observe()["sky_depth"], sky.far, atol=0.001)


def test_linearize_depth_ends() -> None:
    z = np.array([0.0, 1.0])
    np.testing.assert_allclose(linearize_depth(z, 0.01, 3.0), [0.01, 3.0], rtol=1e-6)


def test_depth_key_must_be_free() -> None:
    cams = [CameraConfig("top", depth=True), CameraConfig("top_depth")]
    with pytest.raises(ValueError, match="already taken"):
        PyBulletRobot("panda", cameras=cams)


def test_depth_with_the_egl_renderer_measures_the_same() -> None:
    """EGL's z-buffer linearises to the same metres (skipped where EGL does not load)."""
    with egl_robot() as robot:
        add_box(robot)
        depth = robot.observe()["top_depth"][..., 0]
        np.testing.assert_allclose(depth[CENTRE], EYE_HEIGHT - 2 * HALF, atol=0.002)


def test_egl_frames_show_the_table() -> None:
    """The EGL plugin draws only bodies loaded after it: SimWorld chooses the renderer first."""
    with egl_robot() as robot:
        np.testing.assert_allclose(robot.observe()["top_depth"], EYE_HEIGHT, atol=0.002)


def test_depth_survives_an_episode_store_round_trip(tmp_path) -> None:
    step = np.array([0.01, 0, 0, 0, 0, 0, 1.0])
    with PyBulletRobot("panda", cameras=[TOP], seed=0) as robot:
        store = EpisodeStore.create(tmp_path / "depth.zarr", robot.spec, fps=10)
        sent_depth = []
        with store, store.writer() as writer:
            writer.start_episode(task="depth round trip")
            for _i in range(5):
                obs = robot.observe()
                sent = robot.act({EE_KEY: step})
                writer.add_frame(
                    {**obs.values, **sent},
                    timestamp=obs.timestamp,
                    capture_times=obs.capture_times,
                )
                sent_depth.append(obs["top_depth"])
                robot.clock.sleep_until(robot.clock.now() + 0.1)
            writer.save(success=True)
    with EpisodeStore.open(tmp_path / "depth.zarr") as store:
        assert store.spec["top_depth"] == robot.spec["top_depth"]
        episode = store.read_episode(0)
        assert episode["top_depth"].dtype == np.float32
        np.testing.assert_array_equal(episode["top_depth"], np.stack(sent_depth))  # lossless
        stats = compute_stats(store)
        assert stats["top_depth"].mean.shape == (32, 40, 1)
