"""The policy contract: training, prediction, save/load, spec checks and errors, for every policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from policy_helpers import CAMERA, POLICIES, build, small_config

from robolearn.data.store import EpisodeStore
from robolearn.errors import SpecError
from robolearn.policies import Policy, config_from_dict, make_config, make_policy
from robolearn.policies.act import ACTConfig
from robolearn.policies.diffusion import DiffusionConfig
from robolearn.spec import Feature, FeatureSpec
from robolearn.testing.toy import obstacle_spec, start_observation, write_obstacle_store
from robolearn.training import OptimConfig, fit

# loss at the end of a short run on a tiny dataset, as a fraction of the first steps' loss
OVERFIT = {"mlp": 0.05, "diffusion": 0.2, "diffusion_transformer": 0.3, "flow": 0.3, "act": 0.2}


def _overfit(policy, store, steps, batch_size):
    losses, _ = fit(
        policy,
        policy.dataset(store),
        steps,
        batch_size=batch_size,
        config=OptimConfig(lr=1e-3, warmup_steps=20),
    )
    assert np.isfinite(losses).all()
    return np.mean(losses[:10]), np.mean(losses[-20:])


@pytest.mark.parametrize("name", POLICIES)
def test_overfits_a_tiny_dataset(name, tiny_store):
    policy = build(name, tiny_store)
    first, last = _overfit(policy, tiny_store, 300, 32)
    assert last < OVERFIT[name] * first, f"{name}: loss {first:.3f} → {last:.3f}"


# steps with the camera: the loss halves by about step 60 (diffusion; ACT by step 20) and is at a
# fifth of its start by step 100 (diffusion) and a twentieth by step 60 (ACT)
CAMERA_STEPS = {"diffusion": 100, "act": 60}


@pytest.mark.parametrize("name", ["diffusion", "act"])
def test_overfits_with_a_camera(name, camera_store):
    """The image path (ResNet-18, augmentation, normalisation) learns too; fewer steps, it is slow."""
    policy = build(name, camera_store)
    first, last = _overfit(policy, camera_store, CAMERA_STEPS[name], 8)
    assert last < 0.5 * first, f"{name}: loss {first:.3f} → {last:.3f}"
    chunk = policy.predict_chunk(start_observation(policy.n_obs_steps, 3, CAMERA))
    assert chunk.shape == (3, policy.horizon, 2)
    assert torch.isfinite(chunk).all()


@pytest.mark.parametrize("name", POLICIES)
def test_save_load_gives_identical_outputs(name, camera_store, tmp_path):
    policy = build(name, camera_store)
    policy.dataset(camera_store)  # the spec fits
    fit(policy, policy.dataset(camera_store), 3, batch_size=4)
    policy.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["spec"]["cam"]["shape"] == [*CAMERA, 3]
    loaded = Policy.load(tmp_path / "p")
    assert type(loaded) is type(policy)
    obs = start_observation(policy.n_obs_steps, 2, CAMERA)
    torch.manual_seed(3)
    a = policy.predict_chunk(obs)
    torch.manual_seed(3)
    b = loaded.predict_chunk(obs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (ka, va), (kb, vb) in zip(
        policy.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name", ["diffusion", "act"])
def test_seeded_cpu_training_is_deterministic(name, camera_store):
    params = []
    for _ in range(2):
        torch.manual_seed(0)
        policy = build(name, camera_store)
        fit(policy, policy.dataset(camera_store), 5, batch_size=4, seed=7)
        params.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    assert torch.equal(params[0], params[1])


def test_spec_mismatch_names_the_key(camera_store, tmp_path):
    policy = build("diffusion", camera_store)
    other = FeatureSpec(
        {
            "pos": Feature((3,), "float32", "state"),
            "target": Feature((2,), "float32", "action"),
            "cam": Feature((*CAMERA, 3), "uint8", "image"),
        }
    )
    with pytest.raises(
        SpecError, match=r"'pos' has shape \(3,\) in the robot but the policy expects \(2,\)"
    ):
        policy.check_spec(other, "the robot")
    no_camera = obstacle_spec()
    with pytest.raises(SpecError, match="expects 'cam', which the robot does not have"):
        policy.check_spec(no_camera, "the robot")
    # a dataset without the camera cannot train it either
    write_obstacle_store(tmp_path / "nocam.zarr", 2)
    with pytest.raises(SpecError, match="'cam'"):
        policy.dataset(tmp_path / "nocam.zarr")


def test_bad_observations_are_refused_with_the_expected_shape(camera_store):
    policy = build("flow", camera_store)
    obs = start_observation(2, 1, CAMERA)
    with pytest.raises(
        SpecError, match=r"'pos' has shape \(1, 2\); the policy expects \(B, 2, 2\)"
    ):
        policy.predict_chunk({**obs, "pos": obs["pos"][:, 0]})
    with pytest.raises(SpecError, match="observation 'cam' is missing"):
        policy.predict_chunk({"pos": obs["pos"]})
    with pytest.raises(SpecError, match="'cam' has batch 1, others have 3"):
        policy.predict_chunk({**obs, "pos": np.zeros((3, 2, 2), np.float32)})


def test_nan_weights_are_caught_before_an_action_leaves(camera_store):
    policy = build("mlp", camera_store)
    with torch.no_grad():
        policy.net[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        policy.predict_chunk(start_observation(2, 1, CAMERA))


def test_unknown_config_keys_are_errors():
    with pytest.raises(SpecError, match=r"unknown policy option\(s\) \['horizn'\]"):
        config_from_dict(DiffusionConfig, {"horizn": 8})
    with pytest.raises(SpecError, match=r"unknown policy.denoiser option\(s\) \['depth'\]"):
        config_from_dict(DiffusionConfig, {"denoiser": {"depth": 3}})
    with pytest.raises(SpecError, match="n_action_steps"):
        make_policy(DiffusionConfig(n_action_steps=40), obstacle_spec())
    with pytest.raises(SpecError, match="multiple of 4"):
        make_policy(DiffusionConfig(horizon=10, n_action_steps=4), obstacle_spec())


@pytest.mark.parametrize("name", ["diffusion", "flow", "act", "mlp"])
def test_shipped_configs_build(name):
    with open(f"configs/policy/{name}.yaml") as f:
        config = make_config(yaml.safe_load(f))
    assert type(config).__name__.lower().startswith(name)
    if name == "act":  # nested defaults are ACT's own, not the generic vision ones
        assert config.vision.norm == "batch" and config.vision.crop is None
        assert isinstance(config, ACTConfig) and config.horizon == 100


def test_policies_take_any_keys_and_sizes(tmp_path):
    """Two cameras of different sizes, two state keys, two action keys; nothing hard-coded."""
    spec = FeatureSpec(
        {
            "joints": Feature((6,), "float32", "state"),
            "gripper": Feature((1,), "float32", "state"),
            "wrist": Feature((24, 32, 3), "uint8", "image"),
            "top": Feature((32, 32, 3), "uint8", "image"),
            "arm": Feature((6,), "float32", "action"),
            "grip": Feature((1,), "float32", "action"),
        }
    )
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(tmp_path / "multi.zarr", spec, fps=10)
    with store, store.writer() as writer:
        for _ in range(2):
            writer.start_episode()
            for t in range(12):
                writer.add_frame(
                    {
                        k: rng.integers(0, 255, f.shape, np.uint8)
                        if f.kind == "image"
                        else rng.normal(size=f.shape).astype(np.float32)
                        for k, f in spec.items()
                    },
                    timestamp=t / 10,
                )
            writer.save()
    for name in ("diffusion", "act"):
        with EpisodeStore.open(tmp_path / "multi.zarr") as store:
            policy = make_policy(small_config(name), store.spec, None)
        losses, _ = fit(policy, policy.dataset(tmp_path / "multi.zarr"), 2, batch_size=4)
        assert np.isfinite(losses).all()
        obs = {
            k: torch.zeros((1, policy.n_obs_steps, *spec[k].shape), dtype=torch.uint8)
            if spec[k].kind == "image"
            else torch.zeros((1, policy.n_obs_steps, *spec[k].shape))
            for k in spec.observation_keys
        }
        chunk = policy.predict_chunk(obs)
        assert chunk.shape == (1, policy.horizon, 7)
        parts = policy.split_actions(chunk)
        assert parts["arm"].shape == (1, policy.horizon, 6) and parts["grip"].shape[-1] == 1


def test_fast_cpu_inference_matches_the_convolution(camera_store):
    """The U-Net's matmul inference path gives the convolution's result (bf16: to ~1 %)."""
    from robolearn.policies.denoisers import set_fast_inference

    policy = build("diffusion", camera_store).eval()
    x = torch.randn(2, 16, 2)
    t = torch.tensor([3, 70])
    cond = torch.randn(2, 2, policy.obs_encoder.dim)
    set_fast_inference(policy.denoiser, None)
    with torch.inference_mode():
        ref = policy.denoiser(x, t, cond)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        set_fast_inference(policy.denoiser, dtype)
        with torch.inference_mode():
            out = policy.denoiser(x, t, cond)
        assert ((out - ref).norm() / ref.norm()).item() < tol
    with pytest.raises(SpecError, match="inference_dtype"):
        build("flow", camera_store, inference_dtype="int8")


def test_pretrained_backbone_loads_only_from_a_named_local_file(tmp_path):
    import torchvision

    from robolearn.policies.vision import resnet18_backbone

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    for norm in ("batch", "group"):
        backbone = resnet18_backbone(norm, tmp_path / "resnet18.pth")
        # the first convolution and the last block's weights are the file's
        torch.testing.assert_close(backbone[0].weight, reference.conv1.weight)
        torch.testing.assert_close(backbone[7][1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        resnet18_backbone("group", tmp_path / "missing.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(SpecError, match="not a torchvision resnet18"):
        resnet18_backbone("batch", tmp_path / "other.pth")


@pytest.mark.parametrize("name", ["mlp", "act"])
def test_the_small_cnn_backbone_learns_and_round_trips(name, camera_store, tmp_path):
    """vision.backbone=cnn: the camera path learns, its feature map sets ACT's image tokens,
    and a saved policy gives the same chunks."""
    import dataclasses

    vision = dataclasses.replace(
        small_config(name).vision, backbone="cnn", norm="batch" if name == "act" else "group"
    )
    policy = build(name, camera_store, vision=vision)
    if name == "act":  # stride 8 on the 32×32 frame: 4×4 tokens per camera
        assert policy.image_tokens == 16
    first, last = _overfit(policy, camera_store, 60, 8)
    assert last < 0.5 * first, f"{name}: loss {first:.3f} → {last:.3f}"
    policy.save(tmp_path / "p")
    loaded = Policy.load(tmp_path / "p")
    assert loaded.config.vision.backbone == "cnn"
    obs = start_observation(policy.n_obs_steps, 2, CAMERA)
    torch.testing.assert_close(policy.predict_chunk(obs), loaded.predict_chunk(obs), rtol=0, atol=0)


@pytest.mark.parametrize("pool", [2, 3])
def test_act_pools_image_features_into_fewer_tokens(pool, camera_store, tmp_path):
    """image_pool: the cnn's 4×4 map of a 32×32 frame becomes 2×2 tokens (a partial window at
    the edge is a token of its own), the policy still learns, and a saved one loads the same."""
    import dataclasses

    vision = dataclasses.replace(small_config("act").vision, backbone="cnn", norm="batch")
    policy = build("act", camera_store, vision=vision, image_pool=pool)
    assert policy.image_tokens == 4
    first, last = _overfit(policy, camera_store, 60, 8)
    assert last < 0.5 * first, f"pool {pool}: loss {first:.3f} → {last:.3f}"
    policy.save(tmp_path / "p")
    loaded = Policy.load(tmp_path / "p")
    assert loaded.config.image_pool == pool
    obs = start_observation(policy.n_obs_steps, 2, CAMERA)
    torch.testing.assert_close(policy.predict_chunk(obs), loaded.predict_chunk(obs), rtol=0, atol=0)
    with pytest.raises(SpecError, match="image_pool 0"):
        build("act", camera_store, vision=vision, image_pool=0)


def test_the_small_cnn_backbone_shapes_folding_and_errors():
    from robolearn.policies.vision import (
        VisionConfig,
        cnn_backbone,
        fold_batchnorm,
        make_backbone,
    )

    net, channels, stride = make_backbone(VisionConfig(backbone="cnn"))
    assert (channels, stride) == (64, 8)
    assert net(torch.rand(2, 3, 86, 86)).shape == (2, 64, 11, 11)
    # BatchNorm folded into the convolutions at inference: the same function
    torch.manual_seed(0)
    bn = cnn_backbone("batch")
    bn.train()
    with torch.no_grad():
        for _ in range(3):
            bn(torch.rand(8, 3, 40, 40))  # running statistics away from their defaults
    bn.eval()
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(bn)(x), bn(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(SpecError, match="backbone=cnn has none"):
        make_backbone(VisionConfig(backbone="cnn", pretrained="weights.pth"))
    with pytest.raises(SpecError, match="resnet18, cnn"):
        make_backbone(VisionConfig(backbone="resnet50"))


def test_augmentation_crops_randomly_when_training_and_centrally_at_inference():
    from robolearn.policies.vision import ImageAugment

    aug = ImageAugment((24, 24), color_jitter=0.3)
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).expand(16, 3, 32, 32)
    x = x / x.max()
    aug.train()
    crops = aug(x)
    assert crops.shape == (16, 3, 24, 24)
    corners = {round(float(c[0, 0, 0]) * (32 * 32 - 1)) for c in crops}
    assert len(corners) > 4  # each sample its own crop (and jitter)
    aug.eval()
    centre = aug(x)
    assert torch.equal(centre, x[:, :, 4:28, 4:28])


def test_spatial_softmax_finds_a_bright_spot():
    from robolearn.policies.vision import SpatialSoftmax

    pool = SpatialSoftmax(1, 1)
    with torch.no_grad():
        pool.proj.weight.fill_(50.0)
        pool.proj.bias.zero_()
    feats = torch.zeros(1, 1, 5, 9)
    feats[0, 0, 4, 0] = 1.0  # bottom-left corner
    xy = pool(feats)
    torch.testing.assert_close(xy, torch.tensor([[-1.0, 1.0]]), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ({"sampler": "dpmsolver"}, 5),
        ({"prediction_type": "sample"}, 10),
        ({"sampler": "ddpm"}, 100),
    ],
)
def test_diffusion_samplers_and_prediction_types(overrides, steps, tiny_store):
    policy = build("diffusion", tiny_store, num_inference_steps=steps, **overrides)
    losses, _ = fit(policy, policy.dataset(tiny_store), 60, batch_size=16)
    assert losses[-1] < losses[0]
    chunk = policy.predict_chunk(start_observation(2, 2))
    assert chunk.shape == (2, 16, 2) and torch.isfinite(chunk).all()


def test_flow_midpoint_integrator(tiny_store):
    policy = build("flow", tiny_store, integrator="midpoint", num_inference_steps=3)
    fit(policy, policy.dataset(tiny_store), 5, batch_size=8)
    assert policy.predict_chunk(start_observation(2, 1)).shape == (1, 16, 2)


def test_ema_weights_are_what_fit_leaves_in_the_policy(tiny_store):
    from robolearn.training import Optimizer

    policy = build("mlp", tiny_store)
    data = policy.dataset(tiny_store)
    opt = Optimizer(policy, OptimConfig(lr=1e-2, warmup_steps=1), 10)
    for _ in range(10):
        opt.step(data.get_batch(np.arange(8)))
    live = [p.detach().clone() for p in policy.parameters()]
    with opt.ema.applied():
        averaged = [p.detach().clone() for p in policy.parameters()]
    restored = list(policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(live, averaged, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(live, restored, strict=True))


def test_the_ema_update_is_diffusers_emamodel_step():
    """robolearn's in-place lerp gives EMAModel.step's averages, decay and step count."""
    from diffusers.training_utils import EMAModel

    from robolearn.training import EMA

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    net[1].bias.requires_grad_(False)  # frozen tensors are copied, not averaged
    ours = EMA(net, power=0.75, max_decay=0.999)
    reference = EMAModel(net.parameters(), decay=0.999, use_ema_warmup=True, power=0.75)
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ours.update()
        reference.step(net.parameters())
    assert ours.model.optimization_step == reference.optimization_step == 5
    assert ours.model.cur_decay_value == reference.cur_decay_value
    for a, b in zip(ours.model.shadow_params, reference.shadow_params, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.model.shadow_params[-1], net[1].bias)


def test_matmul_convolutions_give_the_convolution_result():
    from robolearn.policies.vision import MatmulConv2d, resnet18_backbone

    torch.manual_seed(0)
    net = resnet18_backbone("batch").eval()
    assert sum(isinstance(m, MatmulConv2d) for m in net.modules()) == 20
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        fast = net(x)  # layer3/4 take the matmul path
    with torch.enable_grad():
        ref = net(x)  # autograd on: the plain convolution
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "flow", "act"])
def test_relative_actions_are_offsets_from_the_state_and_travel_with_the_policy(
    name, tiny_store, tmp_path
):
    from robolearn.data.stats import get_stats
    from robolearn.policies.base import relative_action_stats

    config = small_config(name, relative_actions=True)
    with EpisodeStore.open(tiny_store) as store:
        stats = get_stats(store)
        with pytest.raises(SpecError, match="relative_action_stats"):
            make_policy(config, store.spec, stats)  # the relative statistics are needed
        stats = {**stats, **relative_action_stats(store, config)}
        policy = make_policy(config, store.spec, stats)
        absolute = make_policy(small_config(name), store.spec, get_stats(store))
    ds = policy.dataset(tiny_store)
    batch = ds.get_batch(np.arange(0, len(ds), 7))
    target = policy.normalized_actions(batch)
    # the training targets are the motion from the newest observed state, normalised with that
    # motion's own statistics: in [-1, 1] (min_max), or standardised (ACT's mean_std)
    if config.normalization["action"] == "min_max":
        assert target.abs().max() <= 1 + 1e-5 and target.abs().max() > 0.5
    else:
        assert target.mean().abs() < 0.5 and 0.5 < target.std() < 2
    assert not torch.allclose(target, absolute.normalized_actions(batch), atol=0.05)
    raw = torch.cat([batch[k].float().flatten(2) for k in policy.action_keys], -1)
    torch.testing.assert_close(policy.unnormalize_actions(target, batch), raw, atol=1e-5, rtol=0)
    with pytest.raises(SpecError, match="observation they start from"):
        policy.unnormalize_actions(target)
    first, last = _overfit(policy, tiny_store, 300, 32)
    assert last < OVERFIT[name] * first, f"{name}: loss {first:.3f} → {last:.3f}"
    # the same chunk shape moves with the state it starts from; and it survives save → load
    obs = start_observation(policy.n_obs_steps, 2)
    policy.save(tmp_path / "p")
    loaded = Policy.load(tmp_path / "p")
    torch.manual_seed(3)
    a = policy.predict_chunk(obs)
    torch.manual_seed(3)
    b = loaded.predict_chunk(obs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_relative_actions_need_a_state_named_like_the_actions() -> None:
    spec = FeatureSpec(
        {
            "pos": Feature((2,), "float32", "state", names=("x", "y")),
            "action": Feature((2,), "float32", "action", names=("vx", "vy")),
        }
    )
    with pytest.raises(SpecError, match="no action dimension is named like a state"):
        make_policy(small_config("mlp", relative_actions=True), spec)


def test_a_gripper_stays_absolute_under_relative_actions() -> None:
    from robolearn.policies.base import relative_sources

    names = ("joint1.pos", "joint2.pos", "gripper.pos")
    spec = FeatureSpec(
        {
            "state": Feature((3,), "float32", "state", names=names),
            "action.joint": Feature((3,), "float32", "action", names=names),
        }
    )
    index, mask = relative_sources(spec, ["state"], ["action.joint"], ["gripper"])["action.joint"]
    assert index.tolist()[:2] == [0, 1] and mask.tolist() == [True, True, False]
    _, mask = relative_sources(spec, ["state"], ["action.joint"], [])["action.joint"]
    assert mask.tolist() == [True, True, True]
