"""The baselines as their authors' code computes them (docs/par.md, "Baselines").

They read more of the vision tower than the ``[B, N, D]`` tokens and CLS attention (another
layer's keys, the CLS token as an output row), so they run where a model adapter hands them
those (``ReducedLlava``: evaluation, ``generate``), not in exported graphs; ``create_reducer``
finds them, ``available_methods`` (the exportable reducers) does not list them. Importing
registers them.
"""

from par_export.reduce.authors import prumerge, visionzip

__all__ = ["prumerge", "visionzip"]
