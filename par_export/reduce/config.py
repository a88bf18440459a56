"""PAR's configuration: one frozen dataclass; its defaults are listed in docs/par.md ("Defaults")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from par_export.errors import ParExportError

Budget = int | Literal["auto"]


@dataclass(frozen=True)
class PARConfig:
    """Every option of the PAR pipeline (docs/par.md, "Defaults").

    Attributes:
        rewrite: ``"template"`` turns the user prompt into a retrieval query with
            ``template``; ``"none"`` uses the prompt as given.
        template: query template; ``{rest}`` is the prompt without chat scaffolding.
        space: where tokens are compared and reduced. ``"clip"``: the vision tower's
            tokens, retrieved against the prompt in CLIP's joint space (needs a CLIP
            text tower), projected after reducing; ``"llm"``: every token projected
            once, then retrieved, clustered and merged in the LLM's input space.
        budget: fixed number of kept tokens K, or ``"auto"`` for the adaptive rule
            ``K = clamp(#{z_i > alpha}, k_min, k_max)``.
        alpha, k_min, k_max: adaptive budget threshold (in standard deviations) and
            bounds. ``k_max`` is also the padded output width when the budget is a
            tensor (dynamic K, as in an exported graph).
        k_nn: neighbours per token in the kNN graph used for the density.
        beta: weight of relevance against distinctiveness in the router score.
        tau: temperature of the merge weights ``softmax(z / tau)``.
        gamma: tokens with relevance ``z <= -gamma`` are dropped, not merged.
        duplicate_distance: a token within this cosine distance ``1 - S_ij`` of a
            token before it in density order is a duplicate and ranks last as a
            center candidate (our reconstruction: the paper's router removes
            internal redundancy, and a weighted score alone would let a relevant
            token and its copies all become centers).
        router: ``"merge"`` merges every routed token into its center; ``"keep"``
            keeps the centers unmerged.
        positions: M-RoPE families (Qwen2.5-VL): ``"stock"`` gives each kept token the
            (t, h, w) position of its token in the full grid; ``"sequential"`` gives the kept
            tokens consecutive positions, as a reducer that ignores M-RoPE would (an ablation:
            ``par:positions=sequential``). Other families ignore it.
        eps: numerical floor for divisions (std, min-max ranges).
    """

    rewrite: Literal["template", "none"] = "template"
    template: str = "a photo of {rest}"
    space: Literal["clip", "llm"] = "clip"
    budget: Budget = "auto"
    alpha: float = 1.0  # tuned on the demo's validation split (the paper's text leaves it open): docs/par.md
    k_min: int = 16
    k_max: int = 192
    k_nn: int = 8
    beta: float = 0.7
    tau: float = 0.5  # tuned on the demo's validation split: docs/demo.md
    gamma: float = 1.0
    duplicate_distance: float = 1e-4
    router: Literal["merge", "keep"] = "merge"
    positions: Literal["stock", "sequential"] = "stock"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_choice("rewrite", self.rewrite, ("template", "none"))
        _check_choice("space", self.space, ("clip", "llm"))
        _check_choice("router", self.router, ("merge", "keep"))
        _check_choice("positions", self.positions, ("stock", "sequential"))
        if "{rest}" not in self.template:
            raise ParExportError(f"PARConfig.template must contain '{{rest}}', got {self.template!r}")
        check_budget(self.budget, name="PARConfig.budget")
        if not 1 <= self.k_min <= self.k_max:
            raise ParExportError(
                f"PARConfig needs 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}"
            )
        if self.k_nn < 1:
            raise ParExportError(f"PARConfig.k_nn must be >= 1, got {self.k_nn}")
        if not 0.0 <= self.beta <= 1.0:
            raise ParExportError(f"PARConfig.beta must be in [0, 1], got {self.beta}")
        if self.tau <= 0:
            raise ParExportError(f"PARConfig.tau must be > 0, got {self.tau}")
        if self.duplicate_distance < 0:
            raise ParExportError(f"PARConfig.duplicate_distance must be >= 0, got {self.duplicate_distance}")
        if self.eps <= 0:
            raise ParExportError(f"PARConfig.eps must be > 0, got {self.eps}")

    def replace(self, **changes: Any) -> PARConfig:
        """A copy with ``changes`` applied (the dataclass is frozen)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ParExportError(f"unknown PARConfig option(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PARConfig:
        return cls().replace(**values)

    def with_overrides(self, pairs: list[str]) -> PARConfig:
        """A copy with ``["alpha=0.5", "k_max=64", ...]`` applied, each value parsed as the type
        of the option's default (``budget`` takes an int or ``auto``)."""
        names = [f.name for f in dataclasses.fields(self)]
        changes: dict[str, Any] = {}
        for pair in pairs:
            name, sep, text = (part.strip() for part in pair.partition("="))
            if not sep:
                raise ParExportError(f"PAR option {pair!r} is not NAME=VALUE")
            if name not in names:
                raise ParExportError(f"unknown PARConfig option {name!r}; options: {names}")
            kind = type(getattr(self, name))
            try:
                changes[name] = (text if text == "auto" else int(text)) if name == "budget" else kind(text)
            except ValueError:
                raise ParExportError(f"PAR option {name}={text!r}: expected a {kind.__name__}") from None
        return self.replace(**changes)


def check_budget(budget: Any, name: str = "budget") -> None:
    """Raise ``ValueError`` unless ``budget`` is a positive int or ``"auto"``."""
    if budget == "auto":
        return
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ParExportError(f"{name} must be a positive int or 'auto', got {budget!r}")
    if budget <= 0:
        raise ParExportError(f"{name} must be > 0, got {budget}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParExportError(f"PARConfig.{name} must be one of {choices}, got {value!r}")
