"""par-export: PAR (Prompt-Aware Token Reduction) for vision-language models.

The reducers in :mod:`par_export.reduce` are pure torch on ``[B, N, D]`` tensors;
:mod:`par_export.models` plugs them into model families (LLaVA).
"""

from par_export.reduce import (
    PARConfig,
    PARReducer,
    ReductionOutput,
    available_methods,
    create_reducer,
)

__version__ = "0.1.0"

__all__ = [
    "PARConfig",
    "PARReducer",
    "ReductionOutput",
    "__version__",
    "available_methods",
    "create_reducer",
]
