"""The profile's bucket, through boto3 like any S3 client: pointing it at real S3 is only configuration."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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


def exists(profile: Profile, key: str) -> bool:
    """One object, asked for by name: a listing of the bucket would read every DVC object."""
    from botocore.exceptions import ClientError

    try:
        client(profile).head_object(Bucket=profile.bucket, Key=key)
        return True
    except ClientError as e:
        if not_found(e):
            return False
        raise


def not_found(e: Exception) -> bool:
    return getattr(e, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def stand_in_ready(profile: Profile) -> bool:
    """The local stand-in has loaded what it held (mmcore/profile/s3_stand_in.py)."""
    return (profile.path("PROFILE_S3_DIR") / "ready").is_file()


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
    """Keys of a manifest that the bucket no longer holds, or holds with another size. (Sizes, not ETags:
    the ETag of one object differs with how it was uploaded, in one part or several.)"""
    have = {o["key"]: o["size"] for o in manifest(profile)}
    return [o["key"] for o in expected if have.get(o["key"]) != o["size"]]


def upload(profile: Profile, path: Path, key: str) -> None:
    client(profile).upload_file(str(path), profile.bucket, key)


def download(profile: Profile, key: str, path: Path) -> bool:
    """False when the key is not there."""
    from botocore.exceptions import ClientError

    try:
        client(profile).download_file(profile.bucket, key, str(path))
        return True
    except ClientError as e:
        if not_found(e):
            return False
        raise
