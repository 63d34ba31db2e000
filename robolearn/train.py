"""The trainer behind `robolearn train`: a run directory, checkpoints, exact resume, validation,
simulated rollouts, TensorBoard, and data-parallel training through accelerate.

A run directory holds everything about one training run:

    runs/<date>_<time>_<policy>_<dataset>/
      config.yaml           the composed config (what `resume=` reads back)
      train_log.jsonl       one JSON object per logged step, validation and checkpoint
      loss.png              train / validation loss and rollout success against steps
      tb/                   TensorBoard events
      checkpoints/
        step_000500/        config.json + model.safetensors: the policy (EMA weights), loadable
                            with Policy.load, `robolearn eval` and the deployment runtime
          trainer/          what resuming needs: raw weights, AdamW moments, the schedule, the
                            EMA, RNG states and the step (safetensors + JSON, nothing pickled)
        last -> step_…      the newest checkpoint
        best -> step_…      the best: highest rollout success, else lowest validation loss

Batches are drawn from a stateless generator seeded with (seed, rank, step), so a resumed run
reads exactly the batches the uninterrupted run would have read, whatever the number of
DataLoader workers; with the torch RNG restored too, the resumed weights match bit for bit on
the same machine and thread count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from robolearn.errors import RobolearnError
from robolearn.evaluate import EVAL_SEED
from robolearn.record import StopSignals
from robolearn.training import OptimConfig

STATE_FORMAT = "robolearn.trainer/1"
CHECKPOINTS = "checkpoints"
TRAINER_DIR = "trainer"
LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "config.yaml"


class TrainError(RobolearnError):
    """A training run that cannot start or continue as configured."""


# ---------------------------------------------------------------------- the schema
@dataclasses.dataclass
class RolloutConfig:
    episodes: int = 0  # simulated rollouts at every checkpoint (0: none)
    seed: int = EVAL_SEED  # first rollout seed (far from the recording seeds)
    workers: int | None = None  # worker processes (None: one per core)
    max_steps: int | None = None  # per episode (None: the task's limit)


@dataclasses.dataclass
class WandbConfig:
    enabled: bool = False  # needs the `wandb` extra
    project: str = "robolearn"
    entity: str | None = None
    mode: str = "online"  # online | offline


@dataclasses.dataclass
class TrainSettings:
    """Every setting of configs/train/*.yaml (`train.<key>=...` on the command line)."""

    steps: int = 100_000
    batch_size: int = 64  # per process
    seed: int = 0
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    amp: str = "auto"  # auto (bf16 on CUDA, off elsewhere) | bf16 | off
    compile: bool = False  # torch.compile the policy's loss
    threads: int | None = None  # torch threads (None: torch's default)
    num_workers: int | None = None  # DataLoader workers (None: 0 from RAM, else up to 4)
    cache: str = "auto"  # auto (all when it fits in RAM, else lowdim) | all | lowdim | none
    val_fraction: float = 0.1  # episodes held out for the validation loss
    val_every: int = 1000
    val_batches: int = 8
    checkpoint_every: int = 5000
    keep_last: int = 3  # older checkpoints are deleted (never the best)
    log_every: int = 50
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    tensorboard: bool = True
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)

    def check(self) -> None:
        positive = ("steps", "batch_size", "val_every", "checkpoint_every", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise TrainError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        if self.amp not in ("auto", "bf16", "off"):
            raise TrainError(f"train.amp={self.amp!r}: choose auto, bf16 or off")
        if self.cache not in ("auto", "all", "lowdim", "none"):
            raise TrainError(f"train.cache={self.cache!r}: choose auto, all, lowdim or none")
        if not 0 <= self.val_fraction < 1:
            raise TrainError(f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.keep_last < 1:
            raise TrainError(f"train.keep_last must be at least 1, got {self.keep_last}")


# ---------------------------------------------------------------------- batches
class StepBatches(Sampler[list[int]]):
    """Batch indices for steps `start` … `stop`-1, each drawn from its own (seed, rank, step)
    generator: the batches do not depend on what came before, so resuming is exact."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank = start, stop, rank

    def indices(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        return rng.integers(0, self.n, self.batch_size).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def choose_cache(store: Any, mode: str) -> str:
    """`auto`: everything in RAM when the decoded data takes under a third of free memory."""
    if mode != "auto":
        return mode
    frame_bytes = sum(
        int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in store.spec.features.values()
    )
    need = frame_bytes * store.num_frames
    try:
        import psutil

        free = psutil.virtual_memory().available
    except ImportError:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return "all" if need < free / 3 else "lowdim"


# ---------------------------------------------------------------------- state (de)serialisation
def _split_tensors(prefix: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a reference; collect the tensors."""
    if isinstance(value, torch.Tensor):
        name = f"{prefix}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        name = f"{prefix}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": name}
    if isinstance(value, Mapping):
        return {
            "__dict__": [
                [_key(k), _split_tensors(f"{prefix}.{k}", v, tensors)] for k, v in value.items()
            ]
        }
    if isinstance(value, (list, tuple)):
        items = [_split_tensors(f"{prefix}.{i}", v, tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TrainError(f"cannot store {prefix} ({type(value).__name__}) in a checkpoint")


def _key(k: Any) -> Any:
    if not isinstance(k, (str, int)):
        raise TrainError(f"cannot store a dict key of type {type(k).__name__} in a checkpoint")
    return k


def _join_tensors(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__float__" in value:
            return float(value["__float__"])
        if "__tuple__" in value:
            return tuple(_join_tensors(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _join_tensors(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    return value


def save_state(directory: Path, state: Mapping[str, Any]) -> None:
    """A nested structure of tensors, arrays and plain values as state.json + state.safetensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors("s", dict(state), tensors)
    save_file(tensors, str(directory / "state.safetensors"))
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps({"format": STATE_FORMAT, "state": skeleton}) + "\n")
    os.replace(tmp, directory / "state.json")


def load_state(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((directory / "state.json").read_text())
    if meta.get("format") != STATE_FORMAT:
        raise TrainError(f"{directory}: unknown trainer state format {meta.get('format')!r}")
    tensors = load_file(str(directory / "state.safetensors"))
    return _join_tensors(meta["state"], tensors)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": list(np.random.get_state()),  # noqa: NPY002 - user code may use it
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(state["numpy"]))  # type: ignore[arg-type]  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# ---------------------------------------------------------------------- links
def _link(target_dir: Path, name: str) -> None:
    """Point checkpoints/<name> at `target_dir` (atomic replace of a relative symlink)."""
    link = target_dir.parent / name
    tmp = target_dir.parent / f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target_dir.name, target_is_directory=True)
    os.replace(tmp, link)


def find_checkpoint(path: str | os.PathLike[str], which: str = "best") -> Path:
    """A saved policy directory from a run directory (its `best`, else `last`, checkpoint), a
    checkpoints/ folder, or a policy directory itself."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for base in (path / CHECKPOINTS, path):
        for name in (which, "last"):
            if (base / name / "config.json").is_file():
                return (base / name).resolve()
    if not path.exists():
        raise TrainError(f"{path} does not exist; pass a run directory or a saved policy")
    raise TrainError(
        f"{path} holds no checkpoint: pass a run directory of `robolearn train` (with "
        f"{CHECKPOINTS}/last) or a saved policy directory (with config.json)"
    )


# ---------------------------------------------------------------------- the trainer
@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last: Path | None
    best: Path | None
    final_loss: float | None
    val_loss: float | None
    success_rate: float | None
    samples_per_s: float
    seconds: float


class Trainer:
    """Trains `policy_cfg` on `dataset` into `run_dir` with `settings`.

    `env` is the resolved simulated robot config (with its task scene) for rollouts, or None.
    `resume` continues from the run directory's last checkpoint.
    """

    def __init__(
        self,
        *,
        run_dir: str | os.PathLike[str],
        dataset: str,
        policy_cfg: Mapping[str, Any],
        settings: TrainSettings,
        env: Mapping[str, Any] | None = None,
        resume: bool = False,
        console: Any = None,
    ) -> None:
        settings.check()
        self.run_dir = Path(run_dir)
        self.dataset_path = dataset
        self.policy_cfg = dict(policy_cfg)
        self.s = settings
        self.env = dict(env) if env else None
        self.resume = resume
        self.console = console
        if settings.rollout.episodes > 0 and self.env is None:
            raise TrainError(
                "train.rollout.episodes > 0 needs a simulated robot and task: the dataset does "
                "not say which it was recorded with, so name them (robot=sim_panda task=pick_place)"
            )

    # ------------------------------------------------------------------ set-up
    def _say(self, text: str) -> None:
        if self.is_main and self.console is not None:
            self.console.print(text, highlight=False)

    def _setup(self) -> None:
        from accelerate import Accelerator

        from robolearn.data.sequence import split_episodes
        from robolearn.data.stats import get_stats
        from robolearn.data.store import EpisodeStore
        from robolearn.policies import make_config, make_policy
        from robolearn.policies.base import relative_action_stats

        s = self.s
        if s.threads:
            torch.set_num_threads(int(s.threads))
        device = s.device
        if device == "auto":
            device = (
                "cuda"
                if torch.cuda.is_available()
                else ("mps" if torch.backends.mps.is_available() else "cpu")
            )
        self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
        self.is_main = self.accelerator.is_main_process
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.device = (
            self.accelerator.device if device in ("cuda", "cpu", "mps") else torch.device(device)
        )
        self.amp = s.amp == "bf16" or (s.amp == "auto" and self.device.type == "cuda")
        torch.manual_seed(s.seed)

        config = make_config(self.policy_cfg)
        with EpisodeStore.open(self.dataset_path) as store:
            spec, stats = store.spec, get_stats(store)
            episodes = store.num_episodes
            cache = choose_cache(store, s.cache)
            if config.relative_actions and episodes:
                stats = {**stats, **relative_action_stats(store, config)}
        if episodes == 0:
            raise TrainError(f"{self.dataset_path} has no episodes to train on")
        self.policy = make_policy(config, spec, stats).to(self.device)
        train_eps, val_eps = split_episodes(episodes, s.val_fraction, seed=s.seed)
        self.train_eps, self.val_eps = train_eps, val_eps
        self.train_ds = self.policy.dataset(self.dataset_path, episodes=train_eps, cache=cache)
        self.val_ds = (
            self.policy.dataset(self.dataset_path, episodes=val_eps, cache=cache)
            if val_eps
            else None
        )
        self.cache = cache
        workers = s.num_workers
        if workers is None:
            cores = len(os.sched_getaffinity(0))
            workers = 0 if cache == "all" else min(4, max(0, cores - 1))
        self.num_workers = int(workers)

        from robolearn.training import Optimizer

        self.opt = Optimizer(self.policy, s.optim, s.steps)
        self.model: Any = self.policy
        if self.world > 1:
            self.model = self.accelerator.prepare_model(self.policy)
        if s.compile:
            self.model = torch.compile(self.model)
        self.step = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS

    def _trainer_state(self) -> dict[str, Any]:
        opt_state = self.opt.optimizer.state_dict()
        ema = self.opt.ema.state_dict() if self.opt.ema is not None else None
        return {
            "step": self.step,
            "model": {k: v for k, v in self.policy.state_dict().items()},
            "optimizer": opt_state,
            "scheduler": self.opt.scheduler.state_dict(),
            "ema": ema,
            "rng": rng_state(),
            "best": self.best,
            "train_episodes": self.train_eps,
            "val_episodes": self.val_eps,
        }

    def _is_best(self, metrics: Mapping[str, Any]) -> bool:
        """`best`: highest rollout success (ties: lower val loss), else lowest val loss; the
        newest checkpoint wins a tie, and with neither figure the newest is the best."""
        success, val = metrics.get("success_rate"), metrics.get("val_loss")
        key = [
            1 if success is not None else 0,
            success if success is not None else 0.0,
            -val if val is not None else 0.0,
        ]
        old = self.best.get("key")
        if old is not None and key < old:
            return False
        self.best = {"key": key, "step": self.step, **_numbers(metrics)}
        return True

    def save_checkpoint(self, metrics: dict[str, Any]) -> Path:
        """Write checkpoints/step_N (the policy, rollouts when configured, the trainer state);
        point `last` (and `best` when it is) at it. A crash mid-way leaves only a .partial."""
        import shutil

        out = self.checkpoints / f"step_{self.step:06d}"
        tmp = self.checkpoints / f".step_{self.step:06d}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        if self.opt.ema is not None:
            with self.opt.ema.applied():
                self.policy.save(tmp)
        else:
            self.policy.save(tmp)
        if self.s.rollout.episodes > 0:
            metrics.update(self.rollouts(tmp))
        best = self._is_best(metrics)
        save_state(tmp / TRAINER_DIR, self._trainer_state())
        (tmp / "metrics.json").write_text(json.dumps({"step": self.step, **metrics}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        _link(out, "last")
        if best:
            _link(out, "best")
        return out

    def _prune(self) -> None:
        """Delete the oldest checkpoints beyond `keep_last`, never `best` or `last`."""
        import shutil

        steps = sorted(self.checkpoints.glob("step_*"))
        protected = {
            (self.checkpoints / n).resolve()
            for n in ("best", "last")
            if (self.checkpoints / n).exists()
        }
        candidates = [p for p in steps if p.resolve() not in protected]
        while len(steps) > self.s.keep_last and candidates:
            victim = candidates.pop(0)
            steps.remove(victim)
            shutil.rmtree(victim, ignore_errors=True)

    def _restore(self) -> None:
        last = self.checkpoints / "last"
        if not (last / TRAINER_DIR / "state.json").is_file():
            raise TrainError(
                f"{self.run_dir} has no checkpoint to resume from ({last} is missing); "
                "start a new run instead"
            )
        state = load_state(last / TRAINER_DIR)
        if state["train_episodes"] != self.train_eps or state["val_episodes"] != self.val_eps:
            raise TrainError(
                f"{self.dataset_path} changed since the run started (its episode split differs); "
                "a run resumes on the dataset it started with"
            )
        self.policy.load_state_dict(state["model"])
        self.opt.optimizer.load_state_dict(state["optimizer"])
        self.opt.scheduler.load_state_dict(state["scheduler"])
        if self.opt.ema is not None and state["ema"] is not None:
            ema = dict(state["ema"])
            ema["shadow_params"] = [t.to(self.device) for t in ema["shadow_params"]]
            self.opt.ema.load_state_dict(ema)
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best = dict(state.get("best") or {})
        # the log and TensorBoard forget what came after the checkpoint
        log = self.run_dir / LOG_FILE
        if log.exists() and self.is_main:
            kept = [
                line
                for line in log.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step
            ]
            log.write_text("".join(line + "\n" for line in kept))
            self.history = [json.loads(line) for line in kept]
        self._say(f"resuming {self.run_dir} from step {self.step} ({last.resolve().name})")

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.history.append(record)
        with open(self.run_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        for key, value in record.items():
            if key in ("step", "kind") or not isinstance(value, (int, float)):
                continue
            name = f"{record['kind']}/{key}"
            if self.tb is not None:
                self.tb.add_scalar(name, value, step)
            if self.wandb is not None:
                self.wandb.log({name: value}, step=step)

    def _open_loggers(self) -> None:
        self.tb = None
        self.wandb = None
        if not self.is_main:
            return
        if self.s.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
        if self.s.wandb.enabled:
            try:
                import wandb
            except ImportError:
                raise TrainError(
                    "train.wandb.enabled=true needs wandb: pip install 'robolearn[wandb]'"
                ) from None
            self.wandb = wandb.init(
                project=self.s.wandb.project,
                entity=self.s.wandb.entity,
                mode=self.s.wandb.mode,
                dir=str(self.run_dir),
                name=self.run_dir.name,
                id=self.run_dir.name.replace("/", "_"),
                resume="allow",
            )

    # ------------------------------------------------------------------ evaluation
    def validation_loss(self) -> float | None:
        """Mean loss over fixed batches of the held-out episodes (EMA weights, eval mode)."""
        if self.val_ds is None or len(self.val_ds) == 0:
            return None
        total, count = 0.0, 0
        with (
            torch.random.fork_rng(devices=[]),
            torch.no_grad(),
            self._ema_applied(),
        ):
            torch.manual_seed(self.s.seed)  # the same noise every time: comparable figures
            self.policy.eval()
            sampler = StepBatches(len(self.val_ds), self.s.batch_size, self.s.seed + 1, 0, 1)
            for b in range(self.s.val_batches):
                idx = sampler.indices(b)
                batch = self.val_ds.get_batch(idx)
                with self._autocast():
                    loss = self.policy.compute_loss(batch)["loss"]
                total += float(loss) * len(idx)
                count += len(idx)
            self.policy.train()
        return total / count

    def rollouts(self, checkpoint: Path) -> dict[str, Any]:
        from robolearn.evaluate import evaluate

        r = self.s.rollout
        with torch.random.fork_rng(devices=[]):
            report = evaluate(
                checkpoint,
                self.env or {},
                episodes=r.episodes,
                seed=r.seed,
                workers=r.workers,
                videos=0,
                out_dir=checkpoint / "rollouts",
                max_steps=r.max_steps,
            )
        return {
            "success_rate": report.success_rate,
            "success_ci95_low": report.ci95[0],
            "success_ci95_high": report.ci95[1],
            "mean_score": report.mean_score,
            "rollout_episodes": report.episodes,
        }

    @contextlib.contextmanager
    def _ema_applied(self) -> Iterator[None]:
        if self.opt.ema is None:
            yield
        else:
            with self.opt.ema.applied():
                yield

    def _autocast(self) -> Any:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from robolearn.data.sequence import collate_batched

        self._setup()
        s = self.s
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self._restore()
        self._open_loggers()
        if self.step >= s.steps:
            self._say(f"{self.run_dir} already reached step {self.step} of {s.steps}")
        sampler = StepBatches(
            len(self.train_ds), s.batch_size, s.seed, self.step, s.steps, rank=self.rank
        )
        loader = DataLoader(
            self.train_ds,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_batched,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.num_workers else None,
        )
        self._say(
            f"training {type(self.policy).__name__} "
            f"({sum(p.numel() for p in self.policy.parameters()) / 1e6:.2f} M parameters) on "
            f"{self.dataset_path}: {len(self.train_eps)} episodes ({len(self.train_ds)} windows) "
            f"for training, {len(self.val_eps)} held out · {s.steps} steps × batch "
            f"{s.batch_size}{f' × {self.world} processes' if self.world > 1 else ''} on "
            f"{self.device}{' (bf16 autocast)' if self.amp else ''} · cache {self.cache}, "
            f"{self.num_workers} loader workers · run {self.run_dir}"
        )
        tty = self.is_main and self.console is not None and self.console.is_terminal
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not tty,
            transient=False,
        )
        window: list[dict[str, float]] = []
        t_start = time.perf_counter()
        t_window = t_start
        steps_done = 0
        last_ckpt: Path | None = None
        val_loss = success = None
        interrupted = False
        print_every = max(s.steps // 20, s.log_every)
        with StopSignals() as stop, progress:
            bar = progress.add_task("train", total=s.steps, completed=self.step, loss="-", rate="-")
            self.policy.train()
            for batch in loader:
                losses = self._train_step(batch)
                self.step += 1
                steps_done += 1
                window.append(losses)
                if self.step % s.log_every == 0 or self.step == s.steps:
                    now = time.perf_counter()
                    rate = len(window) * s.batch_size * self.world / max(now - t_window, 1e-9)
                    mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    self._log(
                        {
                            "kind": "train",
                            "step": self.step,
                            **mean,
                            "lr": self.opt.scheduler.get_last_lr()[0],
                            "samples_per_s": rate,
                        }
                    )
                    progress.update(bar, loss=f"{mean['loss']:.4f}", rate=f"{rate:,.0f}")
                    if not tty and self.step % print_every < s.log_every:
                        self._say(
                            f"step {self.step}/{s.steps} loss {mean['loss']:.4f} "
                            f"{rate:,.0f} samples/s"
                        )
                    window, t_window = [], now
                progress.update(bar, completed=self.step)
                final = self.step == s.steps
                if self.step % s.val_every == 0 or final:
                    val_loss = self.validation_loss()
                    if val_loss is not None:
                        self._log({"kind": "val", "step": self.step, "loss": val_loss})
                if stop.signal is not None or self.step % s.checkpoint_every == 0 or final:
                    last_ckpt, success = self._checkpoint(val_loss)
                if stop.signal is not None:
                    interrupted = True
                    self._say(
                        f"stopped by signal {stop.signal} at step {self.step}: checkpoint "
                        f"written; continue with: robolearn train resume={self.run_dir}"
                    )
                    break
        seconds = time.perf_counter() - t_start
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.is_main:
            with contextlib.suppress(Exception):  # a plot is a convenience, never a failure
                plot_training(self.run_dir / LOG_FILE, self.run_dir / "loss.png")
        train_losses = [r["loss"] for r in self.history if r.get("kind") == "train"]
        best = self.checkpoints / "best"
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            interrupted=interrupted,
            last=last_ckpt,
            best=best.resolve() if best.exists() else None,
            final_loss=train_losses[-1] if train_losses else None,
            val_loss=val_loss,
            success_rate=success,
            samples_per_s=steps_done * s.batch_size * self.world / max(seconds, 1e-9),
            seconds=seconds,
        )

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        opt = self.opt
        with self._autocast():
            losses = self.model(batch)
        opt.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:
            self.accelerator.backward(losses["loss"])
        else:
            losses["loss"].backward()
        if s_clip := self.s.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), s_clip)
        opt.optimizer.step()
        opt.scheduler.step()
        if opt.ema is not None:
            opt.ema.update()
        out = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(out["loss"]):
            raise TrainError(
                f"the loss became {out['loss']} at step {self.step + 1}: lower train.optim.lr, "
                "check the dataset for NaN (robolearn dataset info) or keep gradient clipping on"
            )
        return out

    def _checkpoint(self, val_loss: float | None) -> tuple[Path | None, float | None]:
        """Checkpoint on the main process (after checking the replicas agree), with rollouts."""
        metrics: dict[str, Any] = {"val_loss": val_loss}
        if self.world > 1:
            metrics["replica_checksums"] = self._replica_checksums()
        out = None
        success = None
        if self.is_main:
            out = self.save_checkpoint(metrics)
            success = metrics.get("success_rate")
            self._log({"kind": "checkpoint", "step": self.step, **_numbers(metrics)})
            if "replica_checksums" in metrics:
                self._log(
                    {
                        "kind": "replicas",
                        "step": self.step,
                        "checksums": metrics["replica_checksums"],
                    }
                )
            self._prune()
            if success is not None:
                self._say(
                    f"step {self.step}: rollout success {success:.0%} over "
                    f"{self.s.rollout.episodes} episodes"
                )
        if self.world > 1:
            self.accelerator.wait_for_everyone()
        return out, success

    def _replica_checksums(self) -> list[float]:
        """Every process's parameter checksum; a mismatch means the replicas diverged."""
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        for p in self.policy.parameters():
            total += p.detach().double().sum() + (p.detach().double() ** 2).sum()
        gathered = self.accelerator.gather(total).tolist()
        if max(gathered) - min(gathered) > 1e-9 * max(1.0, abs(gathered[0])):
            raise TrainError(f"the data-parallel replicas diverged (checksums {gathered})")
        return gathered


def _numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}


# ---------------------------------------------------------------------- the plot
def plot_training(log_path: Path, out: Path) -> Path:
    """Training and validation loss (log scale) and rollout success against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(x) for x in Path(log_path).read_text().splitlines() if x.strip()]
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["loss"]) for r in records if r.get("kind") == "val"]
    roll = [
        (r["step"], r["success_rate"])
        for r in records
        if r.get("kind") == "checkpoint" and "success_rate" in r
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="tab:orange", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if roll:
        ax2 = ax.twinx()
        ax2.plot(*zip(*roll, strict=True), "s--", color="tab:green", label="rollout success")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("success rate")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(Path(log_path).parent.name, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def default_run_dir(policy_cfg: Mapping[str, Any], dataset: str, root: str = "runs") -> Path:
    name = str(policy_cfg.get("_target_", "policy")).split(".")[-1].removesuffix("Config").lower()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return Path(root) / f"{stamp}_{name}_{Path(dataset.rstrip('/')).stem}"


if __name__ == "__main__":  # pragma: no cover - `python -m robolearn.train` is `robolearn train`
    from robolearn.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
