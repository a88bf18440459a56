"""A built artifact: typed manifest and export metadata, the budget rule, and :class:`Artifact`,
which opens a build folder once and reduces images through it."""

from par_export.artifact.artifact import Artifact, Reduced, cast_feed
from par_export.artifact.budget import Budget, parse_budget
from par_export.artifact.manifest import ArtifactError, GraphEntry, Manifest, read_manifest
from par_export.artifact.metadata import ExportMetadata, MetadataError, QuerySettings

__all__ = ["Artifact", "ArtifactError", "Budget", "ExportMetadata", "GraphEntry", "Manifest", "MetadataError",
           "QuerySettings", "Reduced", "cast_feed", "parse_budget", "read_manifest"]
