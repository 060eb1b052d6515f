"""Blue/green deploys behind the profile's nginx: the new bento starts beside the old one, traffic moves
with a graceful reload once the new one is ready, the old one stops after nginx has drained it.

Each bento is a supervisor program (a file in PROFILE_DIR/supervisor/), so `make status` lists it and
`make down` stops it. The state of record is PROFILE_DIR/run/live.json: which colour serves which bento.

    python -m mmcore.serving.bluegreen deploy [--bento parcel-condition:v3]   # default: the champion's
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mmcore.profile import services
from mmcore.profile.settings import Profile

COLOURS = ("blue", "green")
# an uncompressed tar: gzip (BentoML's default .bento) took two minutes of a 2-core machine for 120 MB of
# ONNX weights that hardly compress
BENTO_KEY = "bentos/{name}-{version}.tar"


def live_file(profile: Profile) -> Path:
    return profile.run / "live.json"


def live(profile: Profile) -> dict[str, Any] | None:
    path = live_file(profile)
    return json.loads(path.read_text()) if path.is_file() else None


def upstream(profile: Profile, port: int) -> None:
    """nginx's upstream: the one bento that takes new requests (a 502 from nowhere becomes a 503 that says why)."""
    nginx = profile.dir / "nginx"
    nginx.mkdir(parents=True, exist_ok=True)
    tmp = nginx / "upstream.conf.tmp"
    tmp.write_text(f"upstream parcel_bento {{\n    server 127.0.0.1:{port};\n}}\n")
    tmp.replace(nginx / "upstream.conf")


def program(profile: Profile, colour: str, bento: str, port: int) -> Path:
    """The supervisor program of one colour; BentoML drains its own requests on SIGTERM."""
    path = profile.dir / "supervisor" / f"bento-{colour}.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[program:bento-{colour}]\ncommand=bentoml serve {bento} --host 127.0.0.1 --port {port}\n"
                    f"directory={profile.root}\npriority=40\nautostart=true\nautorestart=true\nstopasgroup=true\n"
                    f"killasgroup=true\nstopwaitsecs=60\nredirect_stderr=true\n"
                    f"stdout_logfile={profile.logs}/bento-{colour}.log\n")
    return path


def nginx_draining(profile: Profile) -> int:
    """Workers of our nginx still answering requests accepted under the earlier configuration."""
    master = (profile.run / "nginx.pid").read_text().strip()
    out = subprocess.run(["ps", "--ppid", master, "-o", "args="], capture_output=True, text=True).stdout
    return sum("shutting down" in line for line in out.splitlines())


def reload_proxy(profile: Profile, timeout: float = 120) -> None:
    """SIGHUP: nginx rereads its files, new workers take new connections, old ones finish theirs and exit."""
    services.ctl(profile, "signal", "HUP", "proxy")
    time.sleep(0.5)
    services.wait_for(lambda: nginx_draining(profile) == 0, timeout, "nginx's old workers to drain")


def remove(profile: Profile, colour: str) -> None:
    conf = profile.dir / "supervisor" / f"bento-{colour}.conf"
    if conf.is_file():
        services.ctl(profile, "stop", f"bento-{colour}", check=False)
        conf.unlink()
    services.ctl(profile, "update")


def switch(profile: Profile, bento: str, ready_timeout: float = 600) -> dict[str, Any]:
    """Start `bento` in the free colour, wait for /readyz, point nginx at it, drain and stop the old one.

    Nothing changes for clients until the new bento is ready; if it never is, it is removed and the old
    one keeps serving (the error says where its log is)."""
    old = live(profile)
    if old and old["bento"] == bento and services.states(profile).get(f"bento-{old['colour']}") == "RUNNING":
        return old
    colour = COLOURS[1] if old and old["colour"] == COLOURS[0] else COLOURS[0]
    port = profile.bento_ports[COLOURS.index(colour)]
    program(profile, colour, bento, port)
    services.ctl(profile, "update")
    services.start(profile, f"bento-{colour}")
    try:
        services.wait_for(lambda: services.http_ok(f"http://127.0.0.1:{port}/readyz"), ready_timeout,
                          f"bento {bento} on port {port}", profile.logs / f"bento-{colour}.log")
    except RuntimeError:
        remove(profile, colour)
        raise
    upstream(profile, port)
    reload_proxy(profile)
    switched_at = time.time()   # every request nginx accepts from now on goes to the new bento
    if old and old["colour"] != colour:
        remove(profile, old["colour"])
    state = {"colour": colour, "port": port, "bento": bento, "switched_at": switched_at,
             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(switched_at))}
    live_file(profile).write_text(json.dumps(state))
    return state


def champion_bento(profile: Profile) -> str | None:
    """The champion's bento tag, made available in the local store: already there, else imported from the
    bucket, else built by the package stage. None when the registry has no champion."""
    import bentoml

    from mmcore import registry
    from mmcore.config import load_params

    name = load_params(profile.root / "params.yaml").registry.model_name
    version = registry.alias_version(name, registry.CHAMPION)
    if version is None:
        return None
    tag = f"{name}:v{version}"
    try:
        bentoml.bentos.get(tag)
    except bentoml.exceptions.NotFound:
        from mmcore.profile import objectstore

        with tempfile.TemporaryDirectory(prefix="bento-") as tmp:
            if objectstore.download(profile, bento_key(tag), Path(tmp) / "b.tar"):
                bentoml.bentos.import_bento(str(Path(tmp) / "b.tar"))
            else:
                subprocess.run([sys.executable, "-m", "mmcore.stages.package", "--out", "reports/package.json"],
                               cwd=profile.root, check=True)
    return tag


def bento_key(tag: str) -> str:
    name, version = tag.split(":")
    return BENTO_KEY.format(name=name, version=version)


def keep(profile: Profile, tag: str) -> None:
    """The bento into the bucket (once): a restored profile serves the very same files."""
    import bentoml

    from mmcore.profile import objectstore

    if objectstore.exists(profile, bento_key(tag)):
        return
    with tempfile.TemporaryDirectory(prefix="bento-") as tmp:
        path = bentoml.bentos.export_bento(tag, str(Path(tmp) / "b.tar"), output_format="tar")
        objectstore.upload(profile, Path(path), bento_key(tag))


def deploy(profile: Profile, bento: str | None = None) -> dict[str, Any] | None:
    """The new bento serves first; its copy in the bucket (for a restore) is made after the switch."""
    bento = bento or champion_bento(profile)
    if not bento:
        return None
    state = switch(profile, bento)
    keep(profile, bento)
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.serving.bluegreen", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    dep = sub.add_parser("deploy", help="serve a bento (default: the champion's) behind the proxy")
    dep.add_argument("--bento", help="bento tag, e.g. parcel-condition:v3")
    sub.add_parser("status", help="which bento serves behind the proxy")
    args = ap.parse_args(argv)
    profile = Profile.load()
    os.environ.update(profile.client_env())
    if args.command == "status":
        print(json.dumps(live(profile), indent=2))
        return 0
    state = deploy(profile, args.bento)
    print(f"serving {state['bento']} ({state['colour']}, port {state['port']}) behind {profile.proxy_url}"
          if state else "no champion in the registry yet: nothing to serve")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
