"""How many visual tokens a graph keeps per image: one :class:`Budget` and its rule, in one place.

A budget is spelled ``"auto"`` (PAR's adaptive K) or a positive int K wherever a user gives one
(``--budget``, ``--budgets``, a request); an exported graph fixes how it takes it (:attr:`Budget.mode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from par_export.errors import ParExportError

AUTO = "auto"
MODES = ("input", "auto", "fixed")


def parse_budget(text: str | int, flag: str = "budget") -> int | str:
    """``"auto"`` or an int K >= 1 from what a user typed; :class:`ParExportError` naming ``flag`` otherwise."""
    if text == AUTO:
        return AUTO
    if isinstance(text, bool):
        raise ParExportError(f"{flag} must be a positive int or 'auto', got {text!r}")
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ParExportError(f"{flag} must be a positive int or 'auto', got {text!r}") from None
    if isinstance(text, float) and text != value:
        raise ParExportError(f"{flag} must be a positive int or 'auto', got {text!r}")
    if value <= 0:
        raise ParExportError(f"{flag} must be > 0, got {value}")
    return value


@dataclass(frozen=True)
class Budget:
    """The budget contract of one exported vision graph.

    Attributes:
        mode: ``"input"``: K is the graph's ``budget`` input (0-d int64, 1 <= K <= ``width``);
            ``"auto"``: adaptive K, no input; ``"fixed"``: K traced into the graph (``pool``'s grid).
        default: the K the graph was exported with (``"auto"`` for mode ``auto``), used when a call
            gives none.
        width: rows of ``image_embeds`` per image (the most any K can be).
    """

    mode: str
    default: int | str
    width: int

    def __post_init__(self):
        if self.mode not in MODES:
            raise ParExportError(f"budget mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (self.mode == "auto") != (self.default == AUTO):
            raise ParExportError(f"budget {self.default!r} does not match mode {self.mode!r}")

    @classmethod
    def for_export(cls, method: type, budget: int | str, width: int = 0) -> Budget:
        """The mode a reducer class gets for ``--budget``: ``auto`` where it supports it, ``fixed``
        for ``pool`` (its grid is traced), else a ``budget`` input."""
        budget = parse_budget(budget)
        if budget == AUTO:
            if not method.supports_auto:
                raise ParExportError(f"method {method.name!r} has no adaptive budget; pass an int budget")
            return cls("auto", AUTO, width)
        return cls("fixed" if method.name == "pool" else "input", budget, width)

    @property
    def takes_input(self) -> bool:
        """The graph has a ``budget`` input."""
        return self.mode == "input"

    @property
    def traced(self) -> str | int:
        """What :class:`~par_export.models.graphs.VisionParGraph` is traced with: ``"input"``,
        ``"auto"``, or the fixed K."""
        return self.default if self.mode == "fixed" else self.mode

    @property
    def validation_value(self) -> int | str:
        """The K verify feeds (the export's own, within the width)."""
        return min(int(self.default), self.width) if self.takes_input else self.default

    def feed(self, requested: int | str | None = None) -> np.ndarray | None:
        """The ``budget`` input for one call, or ``None`` where the graph takes none. ``requested``:
        ``None`` (the export's K), ``"auto"`` (only a graph exported with ``--budget auto``) or an int
        K (in ``[1, width]`` for a graph with a budget input; equal to the fixed K otherwise)."""
        if requested is None:
            return np.array(int(self.default), np.int64) if self.takes_input else None
        if isinstance(requested, (str, bool)):
            requested = parse_budget(requested)
        if requested == AUTO:
            if self.mode != "auto":
                raise ParExportError(f"budget 'auto': this artifact keeps a fixed K (its budget is {self.default!r}); "
                                     "pass --budget K, or export with --budget auto for an adaptive K")
            return None
        if not self.takes_input:
            if requested == self.default:
                return None
            if self.mode == "auto":
                raise ParExportError(f"budget {requested}: this artifact chooses K itself (exported with --budget "
                                     "auto); build or export with --budget K for a per-call budget")
            raise ParExportError(f"budget {requested}: this artifact's budget is {self.default!r}, fixed at export; "
                                 "it takes no other")
        if not 1 <= int(requested) <= self.width:
            raise ParExportError(f"budget must be in [1, {self.width}] for this artifact, got {requested}")
        return np.array(int(requested), np.int64)
