"""Token reducers: pure torch on ``[B, N, D]`` visual tokens, no model knowledge.

``create_reducer(name)`` builds any registered method; ``PARReducer`` is PAR itself
(docs/par.md), the baselines live in :mod:`par_export.reduce.baselines`.
"""

from par_export.reduce import authors, baselines  # noqa: F401  (registers the baselines and authors' forms)
from par_export.reduce.config import PARConfig
from par_export.reduce.output import ReductionOutput
from par_export.reduce.par import PARReducer
from par_export.reduce.prompt import rewrite_prompt
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import authors_methods, available_methods, create_reducer, reducer_class, register

__all__ = [
    "PARConfig",
    "PARReducer",
    "ReductionOutput",
    "TokenReducer",
    "authors_methods",
    "available_methods",
    "create_reducer",
    "reducer_class",
    "register",
    "rewrite_prompt",
]
