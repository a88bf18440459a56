"""Model-family adapters: hook a reducer of :mod:`par_export.reduce` into a model."""
