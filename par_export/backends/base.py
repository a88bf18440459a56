"""The runner interface every backend implements: Polygraphy's ``BaseRunner``."""

from __future__ import annotations

import contextlib
import time

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata


class BackendUnavailable(RuntimeError):
    """A backend's runtime is not installed or cannot serve this artifact; the message says how to get it."""


class Runner(BaseRunner):
    """A Polygraphy runner (``with runner: outputs = runner.infer(feed)``; ``Comparator.run`` takes it).

    Beyond ``BaseRunner``: ``infer`` ignores feeds for inputs the graph does not declare
    (prompt-agnostic graphs have no ``query_embeds``), returns a plain dict of numpy arrays, and
    ``last_inference_ms`` is the wall time of the last call. Subclasses implement
    :meth:`input_names`, ``activate_impl``, ``infer_impl`` and ``deactivate_impl``.
    """

    name = "runner"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name or type(self).name)
        self.inference_time = float("nan")

    @property
    def last_inference_ms(self) -> float:
        return self.inference_time * 1e3

    def infer(self, feed_dict: dict[str, np.ndarray], check_inputs: bool = False) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: call activate() (or use `with runner:`) before infer()")
        names = self.input_names()
        start = time.perf_counter()
        outputs = super().infer({k: v for k, v in feed_dict.items() if k in names}, check_inputs=check_inputs)
        self.inference_time = time.perf_counter() - start
        return dict(outputs)

    def input_names(self) -> list[str]:
        raise NotImplementedError

    def get_input_metadata_impl(self) -> TensorMetadata:
        """Names only (dtypes and shapes are the backend's to check)."""
        metadata = TensorMetadata()
        for name in self.input_names():
            metadata.add(name, dtype=None, shape=None)
        return metadata

    def deactivate_impl(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()


@contextlib.contextmanager
def quiet_polygraphy():
    """Polygraphy's logger at errors only: its per-input cast notices would bury our tables."""
    from polygraphy.logger import G_LOGGER

    previous, G_LOGGER.module_severity = G_LOGGER.module_severity, G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = previous
