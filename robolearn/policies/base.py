"""The policy contract: compute_loss, predict_chunk, reset, save/load, and the spec it was trained on."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from robolearn.data.sequence import SequenceDataset
from robolearn.data.stats import KeyStats
from robolearn.errors import SpecError
from robolearn.policies.cache import cpu_weights
from robolearn.policies.normalize import Normalizer, NormMode
from robolearn.policies.vision import ImageEncoder, VisionConfig
from robolearn.spec import FeatureSpec

FORMAT = "robolearn.policy/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass
class PolicyConfig:
    """What every policy has: its window, the keys it reads and writes, and their normalisation.

    `obs_keys` / `action_keys` default to every observation / action key of the dataset's spec.
    A policy sees `n_obs_steps` observations and predicts `horizon` actions; the runtime executes
    `n_action_steps` of them before asking again (receding horizon).
    """

    policy: ClassVar[str]  # "module:Class" of the policy this config builds
    # how the deployment runtime executes chunks when runner.mode=auto (robolearn.runner):
    # blend (receding horizon with a cross-fade at chunk switches) or ensemble (ACT's)
    execution: ClassVar[str] = "blend"

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    obs_keys: list[str] | None = None
    action_keys: list[str] | None = None
    normalization: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"state": "min_max", "action": "min_max", "image": "mean_std"}
    )
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    # weights of the matrix products at CPU inference (robolearn.policies.cache.cpu_weights):
    # float32 as trained, or float16 (half the bytes read per call; TF32's rounding, actions
    # within ~1e-4 of their range). Training, CUDA and MPS are not affected.
    inference_dtype: str = "float32"
    # predict each action as an offset from the newest observed state of the same name (a
    # joint target as a change from where the joint is now; UMI's relative trajectories): the
    # network then learns the small motion, not the identity map from state to target, which a
    # regressor gets only to a percent or so of the joint range, centimetres at the hand.
    # Action dimensions without a same-named state dimension stay absolute, and so do those
    # whose name contains one of `absolute_names` (a gripper's command is a grip, not a motion).
    relative_actions: bool = False
    absolute_names: list[str] = dataclasses.field(default_factory=lambda: ["gripper"])

    def validate(self) -> None:
        dtypes = getattr(self, "INFERENCE_DTYPES", ("float32", "float16"))
        if self.inference_dtype not in dtypes:
            raise SpecError(
                f"inference_dtype {self.inference_dtype!r}: choose one of {', '.join(dtypes)}"
            )
        if self.n_obs_steps < 1 or self.horizon < 1:
            raise SpecError(
                f"n_obs_steps ({self.n_obs_steps}) and horizon ({self.horizon}) must be ≥ 1"
            )
        if not 1 <= self.n_action_steps <= self.horizon:
            raise SpecError(
                f"n_action_steps ({self.n_action_steps}) must be between 1 and horizon ({self.horizon})"
            )

    @property
    def action_offset(self) -> int:
        """Where the predicted chunk starts relative to the newest observation (0: at it)."""
        return -(self.n_obs_steps - 1)


def config_from_dict(cls: type, values: Mapping[str, Any], where: str = "policy") -> Any:
    """Build a config dataclass from a mapping; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields) - {"_target_"})
    if unknown:
        raise SpecError(f"unknown {where} option(s) {unknown}; {cls.__name__} has {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name == "_target_":
            continue
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            # Fields not given keep this config's default for them (ACT's vision defaults
            # differ from diffusion's), not the nested class's own defaults.
            sub = config_from_dict(hint, value, f"{where}.{name}")  # type: ignore[arg-type]
            field = fields[name]
            if field.default_factory is not dataclasses.MISSING:
                given = {k: getattr(sub, k) for k in value if k != "_target_"}
                sub = dataclasses.replace(field.default_factory(), **given)
            value = sub
        elif isinstance(value, tuple):
            value = list(value)
        kwargs[name] = value
    return cls(**kwargs)


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise SpecError(f"cannot import {path!r}: {e}") from e
    return obj


def make_config(values: Mapping[str, Any]) -> PolicyConfig:
    """A policy config from a mapping with `_target_` naming its config class (configs/policy/*.yaml)."""
    target = values.get("_target_")
    if not isinstance(target, str):
        raise SpecError("a policy config needs `_target_: <module>.<ConfigClass>`")
    module, _, name = target.rpartition(".")
    cls = _import(f"{module}:{name}")
    if not (isinstance(cls, type) and issubclass(cls, PolicyConfig)):
        raise SpecError(f"{target} is not a policy config class")
    return config_from_dict(cls, values)


def make_policy(
    config: PolicyConfig, spec: FeatureSpec, stats: Mapping[str, KeyStats] | None = None
) -> Policy:
    """The policy that `config` describes, for data of `spec` normalised with `stats`."""
    cls = _import(config.policy)
    return cls(config, spec, stats)


def preferred_mode(config: PolicyConfig) -> str:
    """How the runtime executes this policy's chunks when asked for `auto`: its class's
    `execution`, except temporal ensembling for relative actions. A chunk of relative actions
    is anchored on the measured state, which lags the commands; executed one whole chunk at a
    time (sync, blend) that lag compounds from chunk to chunk into a growing swing, while the
    ensemble's average over chunks anchored a tick apart damps it (docs/benchmarks.md)."""
    return "ensemble" if config.relative_actions else config.execution


REL = "@relative"  # normaliser key suffix of an action key predicted relative to the state


def relative_sources(
    spec: FeatureSpec,
    state_keys: Sequence[str],
    action_keys: Sequence[str],
    absolute_names: Sequence[str] = (),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each action key with dimensions named like a state dimension: (index into the
    concatenated state vector of `state_keys`, mask of the dimensions that are relative; not
    those whose name contains one of `absolute_names`)."""
    where: dict[str, int] = {}
    at = 0
    for key in state_keys:
        f = spec[key]
        for j, name in enumerate(f.names or ()):
            where.setdefault(name, at + j)
        at += f.size
    out = {}
    for key in action_keys:
        names = spec[key].names or ()
        index = np.array([where.get(n, 0) for n in names], dtype=np.int64)
        mask = np.array(
            [n in where and not any(a in n for a in absolute_names) for n in names], dtype=bool
        )
        if len(names) == spec[key].size and mask.any():
            out[key] = (index, mask)
    if not out:
        raise SpecError(
            "relative_actions: no action dimension is named like a state dimension "
            f"(actions {list(action_keys)}, state {list(state_keys)}); read the joint state "
            "(obs_keys) or set relative_actions=false"
        )
    return out


def relative_action_stats(
    store: Any, config: PolicyConfig, spec: FeatureSpec | None = None
) -> dict[str, KeyStats]:
    """Normalisation statistics of the relative actions a policy of `config` is trained on
    (every window of every episode of `store`), keyed `<action key>@relative`."""
    spec = spec or store.spec
    obs_keys = list(config.obs_keys) if config.obs_keys else spec.observation_keys
    action_keys = list(config.action_keys) if config.action_keys else spec.action_keys
    state_keys = [k for k in obs_keys if spec[k].kind == "state"]
    sources = relative_sources(spec, state_keys, action_keys, config.absolute_names)
    horizon, offset = config.horizon, config.action_offset
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in sources}
    for ep in range(store.num_episodes):
        a, b = store.bounds(ep)
        state = np.concatenate(
            [store.read(k, a, b).reshape(b - a, -1) for k in state_keys], axis=1
        ).astype(np.float64)
        steps = np.clip(np.arange(b - a)[:, None] + offset + np.arange(horizon), 0, b - a - 1)
        for key, (index, mask) in sources.items():
            act = store.read(key, a, b).reshape(b - a, -1).astype(np.float64)
            base = state[:, index] * mask
            chunks[key].append((act[steps] - base[:, None, :]).reshape(-1, act.shape[1]))
    out = {}
    for key, parts in chunks.items():
        x = np.concatenate(parts)
        out[key + REL] = KeyStats(
            min=x.min(0),
            max=x.max(0),
            mean=x.mean(0),
            std=x.std(0),
            p01=np.percentile(x, 1, axis=0),
            p99=np.percentile(x, 99, axis=0),
            count=len(x),
        )
    return out


def masked_mean(err: torch.Tensor, action_is_pad: torch.Tensor) -> torch.Tensor:
    """Mean of a per-element loss (B, H, A) over the steps that are not padding.

    Steps past an episode's end repeat its last action and carry no information.
    """
    mask = (~action_is_pad).unsqueeze(-1).to(err.dtype)
    return (err * mask).sum() / (mask.sum() * err.shape[-1]).clamp(min=1)


class Policy(nn.Module):
    """Base of every policy. Subclasses implement `compute_loss` and `_predict`.

    Observations and actions are dicts keyed like the spec; images are uint8 H×W×C and become
    float on the policy's device. Actions of all action keys are concatenated in spec order
    into one vector of `action_dim`; `split_actions` undoes that.
    """

    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(
        self,
        config: PolicyConfig,
        spec: FeatureSpec,
        stats: Mapping[str, KeyStats] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise SpecError(f"{type(self).__name__} needs a {self.config_class.__name__}")
        config.validate()
        self.config = config
        obs_keys = list(config.obs_keys) if config.obs_keys else spec.observation_keys
        action_keys = list(config.action_keys) if config.action_keys else spec.action_keys
        for key in obs_keys + action_keys:
            if key not in spec:
                raise SpecError(
                    f"the policy reads {key!r}, which the data does not have ({list(spec)})"
                )
        for key in obs_keys:
            if spec[key].kind == "action":
                raise SpecError(f"{key!r} is an action; list it in action_keys, not obs_keys")
        for key in action_keys:
            if spec[key].kind != "action":
                raise SpecError(f"{key!r} is a {spec[key].kind}, not an action")
        if not action_keys:
            raise SpecError("the data has no action key for the policy to learn")
        for key in obs_keys:
            f = spec[key]
            if f.kind == "image" and (len(f.shape) != 3 or f.dtype != "uint8"):
                raise SpecError(f"image {key!r} must be uint8 H×W×C, got {f.dtype} {f.shape}")
        self.spec = FeatureSpec({k: spec[k] for k in obs_keys + action_keys})
        self.obs_keys = obs_keys
        self.action_keys = action_keys
        self.state_keys = [k for k in obs_keys if spec[k].kind == "state"]
        self.image_keys = [k for k in obs_keys if spec[k].kind == "image"]
        self.action_sizes = [spec[k].size for k in action_keys]
        self.action_dim = sum(self.action_sizes)
        self.state_dim = sum(spec[k].size for k in self.state_keys)
        modes: dict[str, NormMode] = {}
        for key in self.spec:
            mode = config.normalization.get(self.spec[key].kind, "identity")
            modes[key] = mode  # type: ignore[assignment]
        norm_spec: Mapping[str, Any] = self.spec
        self._relative: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if config.relative_actions:
            sources = relative_sources(
                self.spec, self.state_keys, action_keys, config.absolute_names
            )
            norm_spec = {**self.spec, **{k + REL: self.spec[k] for k in sources}}
            for key, (index, mask) in sources.items():
                modes[key + REL] = modes[key]
                self._relative[key] = (torch.as_tensor(index), torch.as_tensor(mask))
            if stats is not None and any(k + REL not in stats for k in sources):
                raise SpecError(
                    "relative_actions: the statistics lack the relative actions; compute them "
                    "with robolearn.policies.base.relative_action_stats(store, config)"
                )
        self.normalizer = Normalizer(norm_spec, modes, stats)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    @property
    def horizon(self) -> int:
        return self.config.horizon

    # ------------------------------------------------------------------ data
    def dataset(self, store: Any, **kwargs: Any) -> SequenceDataset:
        """The SequenceDataset of training windows this policy needs, from a store or its path."""
        ds = SequenceDataset(
            store,
            n_obs_steps=self.n_obs_steps,
            horizon=self.horizon,
            action_offset=self.config.action_offset,
            obs_keys=self.obs_keys,
            action_keys=self.action_keys,
            **kwargs,
        )
        self.check_spec(ds.spec)
        return ds

    def check_spec(self, spec: FeatureSpec, what: str = "the dataset") -> None:
        """Raise SpecError naming the first key where `spec` (a dataset's or robot's) does not fit."""
        spec.check_fits(self.spec, what=what, other_what="the policy")

    def _to_device(self, batch: Mapping[str, Any], keys: Sequence[str]) -> dict[str, torch.Tensor]:
        device = self.device
        out = {}
        for key in keys:
            value = batch[key]
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            out[key] = value.to(device, non_blocking=True)
        return out

    def normalized_state(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Concatenated normalised state keys: (B, T, state_dim), or None without state keys."""
        if not self.state_keys:
            return None
        parts = []
        for key in self.state_keys:
            x = obs[key].float()
            parts.append(self.normalizer.normalize(key, x).flatten(2))
        return torch.cat(parts, -1)

    def _relative_base(self, key: str, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, size of `key`): the newest observed state under `key`'s relative dimensions,
        0 under its absolute ones."""
        index, mask = self._relative[key]
        state = torch.cat([obs[k][:, -1].float().flatten(1) for k in self.state_keys], -1)
        return state[:, index.to(state.device)] * mask.to(state.device)

    def normalized_actions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenated normalised actions of a batch: (B, horizon, action_dim) (relative to
        the batch's newest observed state where `relative_actions` says so)."""
        parts = []
        for k in self.action_keys:
            x = batch[k].float()
            if k in self._relative:
                x = x.flatten(2) - self._relative_base(k, batch)[:, None, :]
                parts.append(self.normalizer.normalize(k + REL, x))
            else:
                parts.append(self.normalizer.normalize(k, x).flatten(2))
        return torch.cat(parts, -1)

    def unnormalize_actions(
        self, actions: torch.Tensor, obs: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Normalised (B, horizon, action_dim) → actions in the data's units; `obs` (the
        window they were predicted from) is needed with `relative_actions`."""
        parts = actions.split(self.action_sizes, dim=-1)
        out = []
        for key, part in zip(self.action_keys, parts, strict=True):
            if key in self._relative:
                if obs is None:
                    raise SpecError("relative actions need the observation they start from")
                x = self.normalizer.unnormalize(key + REL, part)
                out.append(x + self._relative_base(key, obs)[:, None, :].to(x.dtype))
                continue
            shape = self.spec[key].shape
            x = self.normalizer.unnormalize(key, part.reshape(*part.shape[:-1], *shape))
            out.append(x.flatten(actions.dim() - 1))
        return torch.cat(out, -1)

    def split_actions(self, chunk: torch.Tensor | np.ndarray) -> dict[str, Any]:
        """(..., action_dim) → {action key: (..., *shape)} in the spec's order."""
        parts = (
            np.split(chunk, np.cumsum(self.action_sizes)[:-1], axis=-1)
            if isinstance(chunk, np.ndarray)
            else chunk.split(self.action_sizes, dim=-1)
        )
        return {
            k: p.reshape(*p.shape[:-1], *self.spec[k].shape)
            for k, p in zip(self.action_keys, parts, strict=True)
        }

    # ------------------------------------------------------------------ the contract
    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss of one batch of SequenceDataset windows; "loss" is what to minimise."""
        raise NotImplementedError

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`compute_loss`: calling the module is what DDP and torch.compile wrap."""
        return self.compute_loss(batch)

    def _predict(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised action chunk (B, horizon, action_dim) from device observations."""
        raise NotImplementedError

    def check_observation(self, obs: Mapping[str, Any]) -> int:
        """Raise SpecError unless `obs` holds every observation key as (B, n_obs_steps, *shape)."""
        batch = None
        for key in self.obs_keys:
            if key not in obs:
                raise SpecError(f"observation {key!r} is missing; the policy reads {self.obs_keys}")
            shape = tuple(obs[key].shape)
            want = (self.n_obs_steps, *self.spec[key].shape)
            if len(shape) != len(want) + 1 or shape[1:] != want:
                raise SpecError(
                    f"observation {key!r} has shape {shape}; the policy expects (B, {', '.join(map(str, want))}) "
                    f"— a batch of {self.n_obs_steps} consecutive frames"
                )
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                raise SpecError(f"observation {key!r} has batch {shape[0]}, others have {batch}")
        return int(batch or 0)

    @torch.inference_mode()
    def predict_chunk(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """(B, horizon, action_dim) actions in the data's units for a window of observations.

        `obs[key]` is (B, n_obs_steps, *shape) for every observation key (numpy or torch, any
        device); the newest frame last. The chunk's first action belongs to the oldest observed
        frame when `action_offset` < 0 (diffusion policy's convention); the runtime decides
        which actions to execute. Nothing is kept between calls.
        """
        self.check_observation(obs)
        # eval() walks every submodule (~1 ms for ACT): only when a training loop left it on
        was_training = self.training
        if was_training:
            self.eval()
        try:
            weights = "float16" if self.config.inference_dtype == "float16" else "float32"
            window = self._to_device(obs, self.obs_keys)
            with cpu_weights(weights):
                actions = self._predict(window)
        finally:
            if was_training:
                self.train()
        if not torch.isfinite(actions).all():
            raise FloatingPointError(
                "the policy produced NaN or infinite actions; its weights or inputs are broken"
            )
        return self.unnormalize_actions(actions, window if self._relative else None)

    def reset(self) -> None:
        """Forget anything about the previous episode (stateless policies have nothing to do)."""

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write config.json (policy class, config, spec) and model.safetensors; nothing pickled."""
        from safetensors.torch import save_model

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "policy": f"{type(self).__module__}:{type(self).__qualname__}",
            "config": dataclasses.asdict(self.config),
            "spec": self.spec.to_dict(),
            "num_parameters": sum(p.numel() for p in self.parameters()),
        }
        tmp = path / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        save_model(self, str(path / WEIGHTS_FILE))
        os.replace(tmp, path / CONFIG_FILE)
        return path

    @staticmethod
    def load(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> Policy:
        """The policy saved in `directory` by `save`, on `device`, in eval mode."""
        from safetensors.torch import load_model

        path = Path(directory)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a saved policy: it needs {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
        meta = json.loads((path / CONFIG_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise SpecError(
                f"{path}: unknown policy format {meta.get('format')!r}, expected {FORMAT}"
            )
        cls = _import(meta["policy"])
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise SpecError(f"{meta['policy']} is not a robolearn policy")
        config = config_from_dict(cls.config_class, meta["config"])
        policy = cls(config, FeatureSpec.from_dict(meta["spec"]), None)
        missing, unexpected = load_model(policy, str(path / WEIGHTS_FILE), strict=False)
        if missing or unexpected:
            raise SpecError(
                f"{path / WEIGHTS_FILE} does not match {meta['policy']}: missing {sorted(missing)[:4]}, "
                f"unexpected {sorted(unexpected)[:4]}"
            )
        return policy.to(device).eval()


class ObservationEncoder(nn.Module):
    """Every observation key of one time step → one feature vector: state ⊕ per-camera features.

    Cameras share one ResNet when `vision.shared`, else each has its own.
    """

    def __init__(self, policy: Policy, vision: VisionConfig) -> None:
        super().__init__()
        self.state_keys = list(policy.state_keys)
        self.image_keys = list(policy.image_keys)
        shapes = [policy.spec[k].shape for k in self.image_keys]
        if vision.shared and len(set(shapes)) > 1:
            raise SpecError(
                f"cameras {self.image_keys} have different shapes {shapes}; set vision.shared=false"
            )
        n_enc = min(1, len(shapes)) if vision.shared else len(shapes)
        self.cameras = nn.ModuleList(ImageEncoder(shapes[i], vision) for i in range(n_enc))
        self.shared = vision.shared
        self.dim = policy.state_dim + len(self.image_keys) * vision.feature_dim

    def forward(self, policy: Policy, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{key: (B, T, ...)} on the device → (B, T, dim)."""
        parts = []
        state = policy.normalized_state(obs)
        if state is not None:
            parts.append(state)
        for i, key in enumerate(self.image_keys):
            x = obs[key]
            b, t = x.shape[:2]
            x = x.flatten(0, 1).permute(0, 3, 1, 2).float().div_(255.0)  # (B*T, C, H, W)
            enc = self.cameras[0 if self.shared else i]
            feats = enc(x, lambda y, key=key: policy.normalizer.image(key, y))
            parts.append(feats.reshape(b, t, -1))
        return torch.cat(parts, -1)
