"""docs/operations.md against the real thing: its settings table and its S3 lifecycle rule."""

from __future__ import annotations

import json
import re
import uuid

import boto3  # type: ignore[import-untyped]  # comes with moto, ships no type hints

from exchange.settings import Settings
from tests.conftest import REPO

DOC = (REPO / "docs" / "operations.md").read_text()


def test_the_settings_table_names_every_setting_and_no_other() -> None:
    documented = re.findall(r"^\| `(EXCHANGE_[A-Z0-9_]+)` \|", DOC, re.MULTILINE)
    assert len(documented) == len(set(documented))
    assert set(documented) == {f"EXCHANGE_{name.upper()}" for name in Settings.model_fields}


def test_the_trust_dir_row_says_production_never_reads_it() -> None:
    [row] = re.findall(r"^\| `EXCHANGE_TRUST_DIR` \|.*$", DOC, re.MULTILINE)
    assert "Production never reads it" in row
    assert "refuses to start while it is the development default" in row


def test_the_lifecycle_rule_is_accepted_by_s3_as_written(s3_server) -> None:
    [block] = re.findall(r"```json\n(\{\n  \"Rules\".*?)```", DOC, re.DOTALL)
    rule = json.loads(block)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    bucket = f"lifecycle-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rule)
    [stored] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert stored["ID"] == "abort-incomplete-multipart-uploads"
    assert stored["Status"] == "Enabled"
    assert stored["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    # What the rule is for: an upload begun and never completed stays listed until aborted.
    s3.create_multipart_upload(Bucket=bucket, Key="sha256/" + "0" * 64)
    open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in open_uploads] == ["sha256/" + "0" * 64]
