"""Manifests: the YAML format, its models, loading with positions, schema export. Imports nothing of ours."""

from .errors import Location, ManifestError, ManifestErrors
from .kinds import KINDS
from .validation import Manifests, Resource, load_manifests

__all__ = ["KINDS", "Location", "ManifestError", "ManifestErrors", "Manifests", "Resource", "load_manifests"]
