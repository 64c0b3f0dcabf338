"""The artifact stores: versions and their manifests (``version``), the stores under a root and
the write protocol (``workspace``), object storage (``remote``), who owns a draft
(``ownership``) and where an artifact came from (``provenance``)."""

from .version import MANIFEST, REPORTS, SIGNATURE, Version, check_name, load_version
from .workspace import Draft, Store, Workspace

__all__ = ["MANIFEST", "REPORTS", "SIGNATURE", "Draft", "Store", "Version", "Workspace", "check_name", "load_version"]
