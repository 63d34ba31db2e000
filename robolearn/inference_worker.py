"""Policy inference in a process of its own (`runner.inference=process`).

A background *thread* shares the interpreter with the control loop: between torch's kernels it
holds the GIL, and a model made of many small operations (ACT's transformer, a diffusion
policy's denoising loop) then takes turns with the loop's own Python (the simulator, the
cameras, the robot's bus). A *process* has its own interpreter: the loop never waits for the
model's Python, only for a core, and the operating system's scheduler (with the worker's
lowered priority) decides that.

The parent saves the policy with its own `save` (safetensors + config; nothing pickled) into a
temporary directory, removed as soon as the child has loaded it; the child (started with
`spawn`, so no locks or threads are inherited) loads it on the same device, reports ready, and
then answers requests in order: an observation window in, a chunk out, with the time the
request took from send to answer. A
receiver thread in the parent hands each answer to the runner as it arrives; if the child
dies, the runner is told and stops the episode with the exit code.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from robolearn.errors import RobolearnError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # importing torch and loading a large policy on a busy machine


class InferenceProcessError(RobolearnError):
    """The inference process could not start, or died."""


def predict_actions(policy: Any, window: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The policy's first chunk for `window` as float64 (horizon, action_dim); None if any value
    is NaN or infinite (or the policy raised FloatingPointError)."""
    try:
        out = policy.predict_chunk(window)
    except FloatingPointError:
        return None
    actions = np.asarray(out[0].float().cpu().numpy() if hasattr(out, "cpu") else out[0])
    if not np.isfinite(actions).all():
        return None
    return actions.astype(np.float64)


def _serve(requests: Connection, answers: Connection, path: str, threads: int, nice: int) -> None:
    """The child: load the policy, say ready, answer requests until told to stop."""
    try:
        if nice > 0 and hasattr(os, "nice"):
            os.nice(nice)
        import torch

        from robolearn.policies import Policy

        torch.set_num_threads(max(1, threads))
        with open(os.path.join(path, "device")) as f:
            device = f.read().strip()
        policy = Policy.load(path, device=device)
        policy.eval()
        niceness = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None
        answers.send(("ready", os.getpid(), niceness))
    except BaseException:
        answers.send(("failed", traceback.format_exc()))
        return
    while True:
        try:
            msg = requests.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if msg is None:
            return
        kind = msg[0]
        if kind == "reset":
            policy.reset()
            continue
        _, generation, seq, window, obs_time, sent = msg
        error = None
        actions = None
        try:
            with torch.inference_mode():
                actions = predict_actions(policy, window)
        except Exception:
            error = traceback.format_exc()
        answers.send(("result", generation, seq, obs_time, actions, sent, error))


class InferenceProcess:
    """The parent's side: start the child, send it requests, deliver its answers.

    `deliver(generation, seq, obs_time, actions, latency_s, error)` is called on the receiver
    thread for every answer (`actions` None: a non-finite chunk; `error`: the child's traceback
    text); `died(exc)` once if the child exits while it is still wanted.
    """

    def __init__(
        self,
        policy: Any,
        *,
        deliver: Callable[[int, int, float, np.ndarray | None, float, str | None], None],
        died: Callable[[BaseException], None],
        threads: int = 1,
        nice: int = 0,
    ) -> None:
        from robolearn.policies import Policy

        if not isinstance(policy, Policy):
            raise InferenceProcessError(
                "runner.inference=process needs a robolearn Policy (it is saved and loaded in "
                f"the worker process); {type(policy).__name__} is not one: use inference=thread"
            )
        self.policy = policy
        self.deliver, self.died = deliver, died
        self.threads, self.nice = int(threads), int(nice)
        self.pid: int | None = None
        self.niceness: int | None = None
        self._proc: Any = None
        self._requests: Connection | None = None
        self._answers: Connection | None = None
        self._receiver: threading.Thread | None = None
        self._stopping = False
        self._dir: str | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        ctx = mp.get_context("spawn")
        self._dir = tempfile.mkdtemp(prefix="robolearn-inference-")
        self.policy.save(self._dir)
        with open(os.path.join(self._dir, "device"), "w") as f:
            f.write(str(self.policy.device))
        req_recv, req_send = ctx.Pipe(duplex=False)
        ans_recv, ans_send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_serve,
            args=(req_recv, ans_send, self._dir, self.threads, self.nice),
            name="robolearn-inference",
            daemon=True,
        )
        self._stopping = False
        self._proc.start()
        req_recv.close(), ans_send.close()  # the child's ends
        self._requests, self._answers = req_send, ans_recv
        deadline = time.monotonic() + timeout
        while not ans_recv.poll(0.1):
            if not self._proc.is_alive():
                self.stop()
                raise InferenceProcessError(
                    f"the inference process exited while starting (exit code {self._proc.exitcode})"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise InferenceProcessError(
                    f"the inference process did not start within {timeout:.0f} s"
                )
        msg = ans_recv.recv()
        if msg[0] != "ready":
            self.stop()
            raise InferenceProcessError(
                f"the inference process could not load the policy:\n{msg[1]}"
            )
        _, self.pid, self.niceness = msg
        # the child holds the weights now: drop the copy at once (a killed parent leaves nothing)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._receiver = threading.Thread(
            target=self._receive, name="robolearn-inference-receiver", daemon=True
        )
        self._receiver.start()
        log.info("inference process %s ready (niceness %s)", self.pid, self.niceness)

    def submit(
        self, generation: int, seq: int, window: Mapping[str, np.ndarray], obs_time: float
    ) -> None:
        if self._requests is None:
            raise InferenceProcessError("the inference process is not running")
        try:
            self._requests.send(
                ("predict", generation, seq, dict(window), obs_time, time.monotonic())
            )
        except (BrokenPipeError, OSError) as e:
            code = self._proc.exitcode if self._proc is not None else None
            raise InferenceProcessError(f"the inference process is gone (exit code {code})") from e

    def reset(self) -> None:
        if self._requests is not None:
            with contextlib.suppress(BrokenPipeError, OSError):  # the receiver reports a death
                self._requests.send(("reset",))

    def _receive(self) -> None:
        answers = self._answers
        assert answers is not None
        while True:
            try:
                msg = answers.recv()
            except (EOFError, OSError):
                if not self._stopping:
                    self._proc.join(timeout=1.0)
                    self.died(
                        InferenceProcessError(
                            f"the inference process died (exit code {self._proc.exitcode})"
                        )
                    )
                return
            _, generation, seq, obs_time, actions, sent, error = msg
            self.deliver(generation, seq, obs_time, actions, time.monotonic() - sent, error)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._requests is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._requests.send(None)
        if self._proc is not None:
            self._proc.join(timeout=timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=timeout)
        if self._receiver is not None:  # the child's exit closed its end: the receiver sees EOF
            self._receiver.join(timeout=timeout)
        for conn in (self._requests, self._answers):
            if conn is not None:
                conn.close()
        self._requests = self._answers = None
        self._receiver = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
