"""What every suite may use: an S3 API server process and a bucket of the test's own.

.ci/run starts ``moto_server`` and names it in ``CARTL_TEST_S3_ENDPOINT``; without that the first
test that needs a bucket starts one for the session. The ``AWS_*`` variables point this process
and the servers and workers it starts (they inherit the environment) at it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services import S3_ENV, S3Server, _connects, s3_client, unavailable


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    given = os.environ.get("CARTL_TEST_S3_ENDPOINT")
    server = None
    if given:
        port = int(given.rsplit(":", 1)[1].split("/")[0])
        if not _connects(port):
            unavailable(f"the S3 server at {given} (CARTL_TEST_S3_ENDPOINT) does not answer")
        endpoint = given
    else:
        server = S3Server().start()
        endpoint = server.url
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if server is not None:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[str]:
    """``s3://NAME/cartl``: a new bucket, emptied and removed afterwards."""
    name = f"cartl-test-{secrets.token_hex(4)}"
    client: Any = s3_client(s3_endpoint)
    client.create_bucket(Bucket=name)
    try:
        yield f"s3://{name}/cartl"
    finally:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=name)
        for page in pages:
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        client.delete_bucket(Bucket=name)
