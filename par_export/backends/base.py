"""The runner interface every backend implements."""

from __future__ import annotations

import time

import numpy as np


class BackendUnavailable(RuntimeError):
    """A backend's runtime is not installed or cannot serve this artifact; the message says how to get it."""


class Runner:
    """``with runner: outputs = runner.infer({"pixel_values": ..., ...})``.

    ``infer`` takes and returns numpy arrays by tensor name; feeds for inputs the
    graph does not declare are ignored (prompt-agnostic graphs have no
    ``query_embeds``). ``last_inference_ms`` is the wall time of the last call.
    """

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_ms = float("nan")

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: call activate() (or use `with runner:`) before infer()")
        start = time.perf_counter()
        outputs = self.infer_impl({k: v for k, v in feed.items() if k in self.input_names()})
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return outputs

    def input_names(self) -> list[str]:
        raise NotImplementedError

    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()
