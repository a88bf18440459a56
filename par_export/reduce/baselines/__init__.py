"""Peer reducers behind PAR's interface (docs/par.md, "Baselines"); importing registers them."""

from par_export.reduce.baselines import cls_attn, dart, pool, prumerge, random_keep, text_sim, visionzip

__all__ = ["cls_attn", "dart", "pool", "prumerge", "random_keep", "text_sim", "visionzip"]
