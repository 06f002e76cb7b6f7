"""Evidence packages, format v1: build, sign and verify (docs/packages.md)."""

from exchange.package.build import (
    build_package,
    make_manifest,
    media_type_of,
    sign_manifest,
    write_package,
)
from exchange.package.paths import check_path, path_problem
from exchange.package.verify import (
    SignedManifest,
    VerifiedPackage,
    check_file_list,
    load_manifest,
    verify_manifest,
    verify_package,
)

__all__ = [
    "SignedManifest",
    "VerifiedPackage",
    "build_package",
    "check_file_list",
    "check_path",
    "load_manifest",
    "make_manifest",
    "media_type_of",
    "path_problem",
    "sign_manifest",
    "verify_manifest",
    "verify_package",
    "write_package",
]
