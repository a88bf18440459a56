"""What an export recorded about its graphs: one typed record, read and checked in one place.

The exporter writes :meth:`ExportMetadata.to_json` into every graph's ONNX ``metadata_props``
(``par.*`` keys) and ``build`` copies it into the manifest; everything that runs an artifact reads
it back through :meth:`ExportMetadata.from_json`, which refuses a missing key, a wrong type or a
value out of range with one :class:`MetadataError` line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from par_export.artifact.budget import AUTO, Budget
from par_export.errors import ParExportError

VERSION = 1
"""``metadata_version`` this par-export writes and reads."""

# Bounds that no real model reaches: they turn a corrupt or hand-edited value into one line
# instead of a 224 GiB allocation (an image side of 100000) or a silent wrong run.
MAX_IMAGE_SIZE = 16_384
MAX_TOKENS = 1 << 20
MAX_WIDTH = 1 << 17


class MetadataError(ParExportError):
    """Export metadata with a missing key, a value of the wrong type or out of range."""


def _check(source: str, key: str, value, kind, low=None, high=None, optional: bool = False):
    """``value`` if it is a ``kind`` (bool is no int) within ``[low, high]``, else :class:`MetadataError`
    naming ``metadata.<key>``."""
    key = f"metadata.{key}"
    if value is None and optional:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if ok and low is not None and isinstance(value, (int, float)) and not low <= value <= high:
        raise MetadataError(f"{source}: {key} must be in [{low}, {high}], got {value!r}")
    if not ok:
        names = " or ".join(k.__name__ for k in kinds) + (" or null" if optional else "")
        raise MetadataError(f"{source}: {key} must be {names}, got {value!r:.80}")
    return value


@dataclass(frozen=True)
class QuerySettings:
    """How the prompt becomes the query encoder's input: PAR's rewrite (``rewrite``, ``template``)
    and the tokenizer call (``add_special_tokens``, ``max_length`` tokens)."""

    rewrite: str
    template: str
    add_special_tokens: bool
    max_length: int

    @classmethod
    def from_json(cls, data, source: str) -> QuerySettings:
        _check(source, "query", data, dict)
        return cls(rewrite=_check(source, "query.rewrite", data.get("rewrite"), str),
                   template=_check(source, "query.template", data.get("template"), str),
                   add_special_tokens=_check(source, "query.add_special_tokens", data.get("add_special_tokens"), bool),
                   max_length=_check(source, "query.max_length", data.get("max_length"), int, 1, MAX_TOKENS))


@dataclass(frozen=True)
class ExportOptions:
    """How the graphs were traced: ONNX ``opset``, ``fp16`` weights, ``batch_max`` images per call."""

    opset: int
    fp16: bool
    batch_max: int
    exporter: str = ""

    @classmethod
    def from_json(cls, data, source: str) -> ExportOptions:
        _check(source, "export", data, dict)
        return cls(opset=_check(source, "export.opset", data.get("opset"), int, 7, 100),
                   fp16=_check(source, "export.fp16", data.get("fp16"), bool),
                   batch_max=_check(source, "export.batch_max", data.get("batch_max"), int, 1, 4096),
                   exporter=_check(source, "export.exporter", data.get("exporter", ""), str))


_REQUIRED = ("model", "family", "method", "budget", "budget_input", "width", "tokens_per_image", "image_token_id",
             "space", "query_dim", "config", "export")
# Keys of the common record; every other key of the JSON is the family's geometry.
_COMMON = ("metadata_version", "model", "model_name", "family", "method", "budget", "budget_input", "width",
           "tokens_per_image", "image_size", "image_token_id", "space", "plugin", "clip", "query_dim", "query",
           "config", "export", "versions", "shape_bounds", "graph")


@dataclass(frozen=True)
class ExportMetadata:
    """One export's record (the same in every graph of it; ``graph`` names the file's own).

    Attributes:
        model, model_name, clip: the model folder (or ``tiny``/``demo``) and CLIP folder exported from.
        family: the model family's name (``llava``, ``llava_next``, ``qwen2_5_vl``).
        method: the reducer; ``config``: its :class:`~par_export.reduce.PARConfig` as a dict.
        budget: the export's K (``"auto"``: adaptive); ``budget_input``: K is a graph input.
        width: ``image_embeds`` rows per image; ``tokens_per_image``: N (its lower bound where N
            differs per image); ``image_size``: the tower's square input side in pixels (``None``:
            dynamic resolution).
        image_token_id: the LLM's image placeholder token; ``space``: ``clip`` or ``llm``.
        query_dim: width of ``query_embeds``; ``query``: :class:`QuerySettings`, ``None`` for a
            prompt-agnostic method.
        plugin: ``{op, version}`` of the ``par::TopKCluster`` node, or ``None`` (standard ops).
        export: :class:`ExportOptions`; ``versions``: of the packages that exported it;
            ``shape_bounds``: ``{input: {axis: [min, max]}}`` for TensorRT profiles.
        geometry: the family's own keys (LLaVA-NeXT's ``tokens_per_crop``, Qwen2.5-VL's
            ``spatial_merge_size``, ...), which its export config reads.
    """

    model: str
    family: str
    method: str
    budget: int | str
    budget_input: bool
    width: int
    tokens_per_image: int
    image_size: int | None
    image_token_id: int
    space: str
    query_dim: int
    query: QuerySettings | None
    config: dict
    export: ExportOptions
    model_name: str = ""
    clip: str | None = None
    plugin: dict | None = None
    versions: dict = field(default_factory=dict)
    shape_bounds: dict = field(default_factory=dict)
    graph: str = ""
    geometry: dict = field(default_factory=dict)

    @property
    def budget_rule(self) -> Budget:
        """The graph's :class:`~par_export.artifact.budget.Budget`."""
        mode = "input" if self.budget_input else ("auto" if self.budget == AUTO else "fixed")
        return Budget(mode, self.budget, self.width)

    @classmethod
    def from_json(cls, data, source: str = "metadata") -> ExportMetadata:
        """Check and type a metadata dict (``source`` names it in errors)."""
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: metadata must be a JSON object, got {type(data).__name__}")
        version = data.get("metadata_version")
        if version != VERSION:
            raise MetadataError(f"{source}: metadata_version {version!r}, this par-export reads {VERSION}: export "
                                "(and build) it again with this version")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise MetadataError(f"{source}: metadata.{missing[0]} is missing")
        get = data.get
        budget = get("budget")
        if budget != AUTO:
            _check(source, "budget", budget, int, 1, MAX_WIDTH)
        width = _check(source, "width", get("width"), int, 1, MAX_WIDTH)
        meta = cls(
            model=_check(source, "model", get("model"), str),
            family=_check(source, "family", get("family"), str),
            method=_check(source, "method", get("method"), str),
            budget=budget,
            budget_input=_check(source, "budget_input", get("budget_input"), bool),
            width=width,
            tokens_per_image=_check(source, "tokens_per_image", get("tokens_per_image"), int, 1, MAX_TOKENS),
            image_size=_check(source, "image_size", get("image_size"), int, 1, MAX_IMAGE_SIZE, optional=True),
            image_token_id=_check(source, "image_token_id", get("image_token_id"), int, 0, 1 << 31),
            space=_check(source, "space", get("space"), str),
            query_dim=_check(source, "query_dim", get("query_dim"), int, 1, MAX_WIDTH),
            query=None if get("query") is None else QuerySettings.from_json(get("query"), source),
            config=_check(source, "config", get("config"), dict),
            export=ExportOptions.from_json(get("export"), source),
            model_name=_check(source, "model_name", get("model_name", ""), str),
            clip=_check(source, "clip", get("clip"), str, optional=True),
            plugin=_check(source, "plugin", get("plugin"), dict, optional=True),
            versions=_check(source, "versions", get("versions", {}), dict),
            shape_bounds=_check(source, "shape_bounds", get("shape_bounds", {}), dict),
            graph=_check(source, "graph", get("graph", ""), str),
            geometry={k: v for k, v in data.items() if k not in _COMMON},
        )
        if meta.space not in ("clip", "llm"):
            raise MetadataError(f"{source}: metadata.space must be 'clip' or 'llm', got {meta.space!r}")
        meta.budget_rule  # noqa: B018 - mode and budget agree (Budget checks)
        return meta

    def to_json(self) -> dict:
        """The flat JSON form (the family's geometry keys beside the common ones)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "geometry"}
        data["query"] = None if self.query is None else asdict(self.query)
        data["export"] = asdict(self.export)
        return {"metadata_version": VERSION, **data, **self.geometry}
