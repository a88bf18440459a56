"""Reducers by name: ``create_reducer("par")``, ``available_methods()``."""

from __future__ import annotations

from torch import nn

from par_export.errors import ParExportError
from par_export.reduce.config import PARConfig
from par_export.reduce.reducer import TokenReducer

_REDUCERS: dict[str, type[TokenReducer]] = {}
# The authors' forms (reduce/authors/): they read more of the tower than [B, N, D] and CLS
# attention, so they run in the model adapters (evaluation), not in exported graphs.
_AUTHORS: dict[str, type[TokenReducer]] = {}


def register(cls: type[TokenReducer]) -> type[TokenReducer]:
    """Class decorator: make ``cls`` available as ``create_reducer(cls.name)``."""
    if not cls.name:
        raise ParExportError(f"{cls.__name__} has no name")
    if cls.name in _REDUCERS and _REDUCERS[cls.name] is not cls:
        raise ParExportError(f"reducer name {cls.name!r} is already registered by {_REDUCERS[cls.name].__name__}")
    _REDUCERS[cls.name] = cls
    return cls


def register_authors(cls: type[TokenReducer]) -> type[TokenReducer]:
    """Class decorator for an authors' form (``tower_inputs`` set): ``create_reducer`` finds it,
    ``available_methods`` (the exportable reducers) does not list it."""
    if not cls.tower_inputs:
        raise ParExportError(f"{cls.__name__}: an authors' form declares the tower_inputs it reads")
    _AUTHORS[cls.name] = cls
    return cls


def reducer_class(name: str) -> type[TokenReducer]:
    found = _REDUCERS.get(name) or _AUTHORS.get(name)
    if found is None:
        names = ", ".join(sorted(_REDUCERS) + sorted(_AUTHORS))
        raise ParExportError(f"unknown reduction method {name!r}; available: {names}")
    return found


def create_reducer(
    name: str,
    config: PARConfig | None = None,
    query_projection: nn.Module | None = None,
    **options,
) -> TokenReducer:
    """A reducer by registered name; ``options`` go to that reducer's constructor."""
    return reducer_class(name)(config=config, query_projection=query_projection, **options)


def available_methods() -> dict[str, str]:
    """``{name: one-line description}`` of every registered reducer (each exports)."""
    return {name: _REDUCERS[name].description for name in sorted(_REDUCERS)}


def authors_methods() -> dict[str, str]:
    """``{name: one-line description}`` of the authors' forms (LLaVA-1.5 adapter and eval only)."""
    return {name: _AUTHORS[name].description for name in sorted(_AUTHORS)}
