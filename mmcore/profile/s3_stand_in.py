"""The profile's local stand-in for a bucket: moto's S3 server, which keeps objects in memory, made to keep
them across restarts. At start it loads PROFILE_S3_DIR/objects/<bucket>/<key> through its own S3 API, then
writes `ready`; on SIGTERM or SIGINT (`make down`, `supervisorctl stop s3`) it stops listening, then
writes every object back before it exits. A SIGKILL loses what changed since the last start, as a real bucket never would: this is
a stand-in for trying the profile on one machine; point S3_ENDPOINT_URL at a real endpoint for anything else.

    python -m mmcore.profile.s3_stand_in --port 59000 --dir .profile-s3
"""
from __future__ import annotations

import argparse
import shutil
import signal
import threading
from pathlib import Path
from typing import Any


def client(port: int) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="stand-in",
                        aws_secret_access_key="stand-in", region_name="us-east-1")


def load(s3: Any, objects: Path) -> int:
    n = 0
    for bucket in sorted(p for p in objects.iterdir() if p.is_dir()) if objects.is_dir() else []:
        s3.create_bucket(Bucket=bucket.name)
        for f in sorted(p for p in bucket.rglob("*") if p.is_file()):
            s3.upload_file(str(f), bucket.name, f.relative_to(bucket).as_posix())
            n += 1
    return n


def save(objects: Path) -> int:
    """Every bucket, read from moto's in-process store once the server has stopped listening (nothing can
    change under it), into a new folder that then replaces the old one: a failed save loses nothing."""
    from moto.s3.models import s3_backends

    new, old = objects.with_name(objects.name + ".new"), objects.with_name(objects.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    n = 0
    for partitions in s3_backends.values():
        for backend in partitions.values():
            for name, bucket in backend.buckets.items():
                (new / name).mkdir(parents=True, exist_ok=True)
                for key in bucket.keys.values():
                    dst = new / name / key.name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(key.value)
                    n += 1
    if objects.exists():
        objects.rename(old)
    new.mkdir(parents=True, exist_ok=True)
    new.rename(objects)
    shutil.rmtree(old, ignore_errors=True)
    return n


def main(argv: list[str] | None = None) -> int:
    from moto.server import ThreadedMotoServer

    ap = argparse.ArgumentParser(prog="python -m mmcore.profile.s3_stand_in", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args(argv)
    ready, objects = args.dir / "ready", args.dir / "objects"
    args.dir.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    s3 = client(args.port)
    print(f"s3 stand-in: loaded {load(s3, objects)} objects from {objects}", flush=True)
    ready.touch()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    ready.unlink(missing_ok=True)
    server.stop()
    print(f"s3 stand-in: saved {save(objects)} objects to {objects}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
