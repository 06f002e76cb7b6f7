"""Object storage and the database: adapters around the core.

Only the blob-store contract is re-exported here; the concrete stores live in `local` and `s3`,
and nothing here imports `s3` (so the `minio` SDK stays out of the service's import graph).
"""

from exchange.storage.blobstore import BlobInfo, BlobReader, BlobStore, Readable

__all__ = ["BlobInfo", "BlobReader", "BlobStore", "Readable"]
