"""Bundles for sneakernet: part of a mirror + its indexes + lockfiles in one tar (or zstd tar),
optionally split into parts, and the checked, atomic way back in.

Archive layout (tar, PAX): ``torchdepot-bundle-head.json`` first (every member's path, size
and role: unbundle stages nothing it does not declare), then package files, then indexes/locks, then the bundle manifest
``torchdepot-bundle.json`` LAST (its hashes are computed while the files stream in, so nothing
is read twice and the archive is never held in memory). The bundle manifest lists every
member's path, size, sha256 and role, the mirror spec, and the subset of ``manifest.json``
the bundle describes.

Unbundle never trusts the archive: members must be regular files with safe relative names
(no absolute paths, ``..``, links or devices); everything is extracted into a staging dir
inside the destination and EVERY check (hashes, each member's role against its path,
conflicts) passes before the first file becomes visible. Then files move in by
``os.replace`` as one transaction (packages first, indexes and ``manifest.json`` last;
``whl/`` as a fresh ``.publish/<gen>/whl`` generation swapped in by one symlink rename),
rolled back entirely on a late failure, so a reader never sees an index pointing at a
missing file and a failed unbundle publishes nothing.

Modules: ``model`` (format and types), ``select`` (what goes in), ``archive`` (writing),
``unbundle`` (reading back).
"""

from torchdepot.ship.bundle.archive import write_bundle
from torchdepot.ship.bundle.model import (
                                          BUNDLE_HEAD,
                                          BUNDLE_MANIFEST,
                                          BundleDoc,
                                          BundleError,
                                          BundleFile,
                                          BundlePlan,
                                          PlannedFile,
                                          UnbundleReport,
                                          parse_doc,
                                          parse_head,
                                          parse_size,
                                          role_of,
)
from torchdepot.ship.bundle.select import plan_bundle
from torchdepot.ship.bundle.unbundle import bundle_parts, merge_manifests, unbundle

__all__ = [
    "BUNDLE_HEAD", "BUNDLE_MANIFEST", "BundleDoc", "BundleError", "parse_doc", "parse_head", "role_of", "BundleFile", "BundlePlan", "PlannedFile", "UnbundleReport",
    "bundle_parts", "merge_manifests", "parse_size", "plan_bundle", "unbundle", "write_bundle",
]
