"""The runner interface every backend implements: Polygraphy's ``BaseRunner``."""

from __future__ import annotations

import contextlib
import time

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.logger import G_LOGGER

from par_export.errors import ParExportError


class BackendUnavailable(ParExportError):
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

    def deactivate_impl(self) -> None:
        pass

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()


class PolygraphyRunner(Runner):
    """One of Polygraphy's own runners (``OnnxrtRunner``, ``TrtRunner``) behind :class:`Runner`:
    subclasses make it in :meth:`make_runner`; its input metadata is read once, at activation."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.runner = None
        self.metadata: TensorMetadata | None = None

    def make_runner(self) -> BaseRunner:
        raise NotImplementedError

    def activate_impl(self) -> None:
        self.runner = self.make_runner()
        self.runner.activate()
        self.metadata = self.runner.get_input_metadata(use_numpy_dtypes=False)

    def input_names(self) -> list[str]:
        return list(self.metadata.keys())

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self.metadata  # dtypes and shapes: Comparator casts feeds to them

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # copies: Polygraphy runners may reuse their output buffers between calls
        return {name: np.array(value) for name, value in self.runner.infer(feed, check_inputs=False).items()}

    def deactivate_impl(self) -> None:
        self.runner.deactivate()
        self.runner = self.metadata = None


@contextlib.contextmanager
def quiet_polygraphy():
    """Polygraphy's logger at errors only: its per-input cast notices would bury our tables."""

    previous, G_LOGGER.module_severity = G_LOGGER.module_severity, G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = previous
