"""Where a store lives: a local folder, or a URI on an object store Lance reaches (s3://, gs://, az://, ...).

A URI stays a string from the command line to Lance (pipelines.defaults.absolute leaves it as it
is); Lance itself reads the credentials and the endpoint from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, ...: docs/snapshots.md,
"Object storage"). This module only names tables and explains errors; tables.py opens them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import StoreUnavailableError

CREDENTIALS = {  # the environment variables Lance's object store reads, per scheme (the usual ones)
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or AWS_PROFILE",
    "gs": "GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
}


def is_uri(location: str | os.PathLike) -> bool:
    """True for an object-store URI (`scheme://...`), False for a local path."""
    return "://" in str(location)


def normalize(location: str | os.PathLike) -> Path | str:
    """A local store as a Path; a URI as a string without trailing slashes (`s3://b/p/` is `s3://b/p`)."""
    if not is_uri(location):
        return Path(location)
    uri = str(location).rstrip("/")
    scheme, _, rest = uri.partition("://")
    if not scheme or not rest:
        raise ValueError(f"--db {str(location)!r} names no bucket: write SCHEME://BUCKET[/PREFIX], e.g. s3://my-bucket/beacon")
    return uri


def table_uri(location: Path | str, name: str) -> str:
    """Where table `name` (e.g. "documents.lance") of the store at `location` lives."""
    return str(location / name) if isinstance(location, Path) else f"{location}/{name}"


def is_missing(err: BaseException) -> bool:
    """True if Lance's error says the table is not there (yet) — as opposed to not reachable."""
    return isinstance(err, ValueError) and "was not found" in str(err)


def unavailable(location: Path | str, err: BaseException) -> StoreUnavailableError | None:
    """A one-line StoreUnavailableError naming `location` if `err` says an object store cannot be
    reached (no such bucket, endpoint down, access refused, unknown scheme); None for any other error."""
    if not is_uri(location):
        return None
    text = str(err)
    endpoint = re.search(r"(https?://[^/\s?]+)", text)
    where = endpoint.group(1) if endpoint else "the object store"
    bucket = str(location).partition("://")[2].split("/")[0]
    if "NoSuchBucket" in text:
        why = f"bucket {bucket!r} does not exist at {where}: create it, or give another --db"
    elif "No object store provider found" in text:
        scheme = str(location).partition("://")[0]
        why = f"Lance knows no object store for {scheme}://: use s3://, gs://, az:// (or a local folder)"
    elif "builder error" in text and where.startswith("http://"):
        why = f"the endpoint {where} is plain http: set AWS_ALLOW_HTTP=true to allow it"
    elif "error sending request" in text or "Connection refused" in text or "dns error" in text:
        why = f"the endpoint {where} does not answer: check AWS_ENDPOINT_URL (or the network)"
    elif any(w in text for w in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403 Forbidden")):
        scheme = str(location).partition("://")[0]
        why = f"{where} refused access: check the credentials ({CREDENTIALS.get(scheme, 'see Lance storage options')})"
    else:
        return None
    return StoreUnavailableError(f"cannot reach the snapshot store {str(location)!r}: {why}")
