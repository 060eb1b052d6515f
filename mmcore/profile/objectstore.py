"""The profile's bucket, through boto3 like any S3 client: pointing it at real S3 is only configuration.

moto's S3 server, the local stand-in, keeps objects in memory; its request recorder (a moto feature)
appends every request to PROFILE_S3_DIR/recording.jsonl, and `up` replays that file into a fresh server,
so the stand-in keeps its objects across `make down` and `make up` as a real bucket would."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from mmcore.profile.settings import Profile


def client(profile: Profile) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=profile.s3_endpoint or None,
                        aws_access_key_id=profile.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=profile.env["AWS_SECRET_ACCESS_KEY"],
                        region_name=profile.env["AWS_DEFAULT_REGION"])


def bucket_exists(profile: Profile) -> bool:
    from botocore.exceptions import ClientError

    try:
        client(profile).head_bucket(Bucket=profile.bucket)
        return True
    except ClientError:
        return False


def replay(profile: Profile) -> int:
    """Feed a restarted stand-in what it held (moto's recorder); returns the requests replayed."""
    recording = profile.path("PROFILE_S3_DIR") / "recording.jsonl"
    if not (profile.s3_local and recording.is_file() and recording.stat().st_size) or bucket_exists(profile):
        return 0
    resp = httpx.post(f"{profile.s3_endpoint}/moto-api/recorder/replay-recording", timeout=600)
    resp.raise_for_status()
    return sum(1 for _ in recording.open())


def ensure_bucket(profile: Profile) -> bool:
    """Create the bucket when missing; True when it was created."""
    if bucket_exists(profile):
        return False
    client(profile).create_bucket(Bucket=profile.bucket)
    return True


def manifest(profile: Profile) -> list[dict[str, Any]]:
    """Every object's key, size and ETag: what a backup's databases may point at."""
    pages = client(profile).get_paginator("list_objects_v2").paginate(Bucket=profile.bucket)
    return [{"key": o["Key"], "size": o["Size"], "etag": o["ETag"].strip('"')}
            for page in pages for o in page.get("Contents", [])]


def missing(profile: Profile, expected: list[dict[str, Any]]) -> list[str]:
    """Keys of a manifest that the bucket no longer holds as they were (gone, or another ETag)."""
    have = {o["key"]: o["etag"] for o in manifest(profile)}
    return [o["key"] for o in expected if have.get(o["key"]) != o["etag"]]


def upload(profile: Profile, path: Path, key: str) -> None:
    client(profile).upload_file(str(path), profile.bucket, key)


def download(profile: Profile, key: str, path: Path) -> bool:
    """False when the key is not there."""
    from botocore.exceptions import ClientError

    try:
        client(profile).download_file(profile.bucket, key, str(path))
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise
