"""The production profile: PostgreSQL under Prefect and MLflow, S3 for artifacts, data versions and bentos,
a process worker, and the champion's bento behind nginx; supervisor runs the processes.

    python -m mmcore.profile up [--restore backups/<stamp>]   # make up
    python -m mmcore.profile status                          # make status
    python -m mmcore.profile backup                          # make backup
    python -m mmcore.profile down                            # make down
    eval "$(python -m mmcore.profile env)"                    # a shell that uses the profile
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcore.profile import objectstore, postgres, services
from mmcore.profile.settings import DATABASES, Profile

if TYPE_CHECKING:
    from prefect.automations import Automation

POOL = "retrain-pool"


def say(message: str) -> None:
    print(f"[profile] {message}", flush=True)


def render_nginx(profile: Profile) -> None:
    nginx = profile.dir / "nginx"
    nginx.mkdir(parents=True, exist_ok=True)
    text = string.Template((profile.root / "profile" / "nginx.conf").read_text())
    (nginx / "nginx.conf").write_text(text.safe_substitute(run=profile.run, logs=profile.logs, nginx=nginx,
                                                           port=profile.port("proxy")))
    if not (nginx / "upstream.conf").is_file():
        from mmcore.serving.bluegreen import upstream

        upstream(profile, profile.bento_ports[0])


def run(cmd: list[str], profile: Profile, **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, **profile.client_env(), "PWD": str(profile.root)}
    proc = subprocess.run(cmd, cwd=profile.root, env=env, text=True, capture_output=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def start_databases(profile: Profile, restore_from: Path | None) -> None:
    if not postgres.initialised(profile):
        say(f"initialising a PostgreSQL cluster in {profile.pgdata}")
        postgres.initdb(profile)
    services.start(profile, "postgres")
    services.wait_for(lambda: postgres.ready(profile), 90, "PostgreSQL", profile.logs / "postgres.log")
    made = postgres.create_databases(profile)
    if restore_from:
        for db in DATABASES:
            if db not in made:
                raise SystemExit(f"database {db} already exists: a restore goes into a new profile "
                                 f"(make down, then remove {profile.dir})")
            postgres.restore(profile, db, restore_from / f"{db}.dump")
            say(f"restored database {db} from {restore_from / f'{db}.dump'}")


def start_object_store(profile: Profile, restore_from: Path | None) -> None:
    if profile.s3_local:
        profile.path("PROFILE_S3_DIR").mkdir(parents=True, exist_ok=True)
        services.start(profile, "s3")
        services.wait_for(lambda: objectstore.stand_in_ready(profile), 600, "the S3 stand-in", profile.logs / "s3.log")
    if objectstore.ensure_bucket(profile):
        say(f"created bucket {profile.bucket}")
    if restore_from:
        expected = json.loads((restore_from / "manifest.json").read_text())
        if gone := objectstore.missing(profile, expected):
            raise SystemExit(f"the bucket no longer holds {len(gone)} objects of the backup "
                             f"(first: {gone[:3]}); restore the bucket from its own versioning first")


def configure_prefect(profile: Profile) -> None:
    """The work pool, the deployments of prefect.yaml (their working directory is this checkout) and the
    alert block: idempotent, so every `up` leaves them matching the checkout."""
    run(["prefect", "work-pool", "create", POOL, "--type", "process", "--overwrite"], profile)
    run(["prefect", "--no-prompt", "deploy", "--all"], profile, timeout=600)
    crash_zombies(profile)
    if url := profile.env["PROFILE_WEBHOOK_URL"]:
        run([sys.executable, "-c", "from prefect.blocks.webhook import Webhook; import sys; "
             "Webhook(url=sys.argv[1]).save('retrain-alerts', overwrite=True)", url], profile)


ZOMBIES = "crash-zombie-flow-runs"
# Three missed heartbeats. Not shortened for tests: at 60 s a run waiting out a 20 s PostgreSQL outage (its
# heartbeats lost with the database) was marked Crashed though it was alive (tests/flows/test_profile_faults.py).
ZOMBIE_SILENCE_S = 90


def zombie_automation(silence_s: int = ZOMBIE_SILENCE_S) -> Automation:
    """Prefect's recipe for runs whose process died with its machine or worker: flow runs send a heartbeat
    every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, Prefect's shortest); one silent for `silence_s` is marked
    Crashed, which frees what it held and lets the next run resume from the training checkpoint."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(name=ZOMBIES, trigger=EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
        within=timedelta(seconds=silence_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {silence_s} s: its process died (worker or machine)")],
    )


def crash_zombies(profile: Profile) -> None:
    """The zombie automation on the profile's Prefect server, once (kept as it is when it exists)."""
    from prefect.automations import Automation

    os.environ.update(profile.client_env())
    try:
        Automation.read(name=ZOMBIES)
        return
    except ValueError:
        pass
    zombie_automation().create()


def configure_dvc(profile: Profile) -> None:
    """The DVC remote in the bucket, in .dvc/config.local (the committed config keeps the laptop's remote)."""
    if not (profile.root / ".dvc").is_dir():
        return
    run(["dvc", "remote", "add", "--local", "--force", "--default", "profile", f"s3://{profile.bucket}/dvc"], profile)
    if profile.s3_endpoint:
        run(["dvc", "remote", "modify", "--local", "profile", "endpointurl", profile.s3_endpoint], profile)
    for key, var in (("connect_timeout", "PROFILE_DVC_CONNECT_TIMEOUT_S"),
                     ("read_timeout", "PROFILE_DVC_READ_TIMEOUT_S")):
        run(["dvc", "remote", "modify", "--local", "profile", key, profile.env[var]], profile)


def up(profile: Profile, restore_from: Path | None = None) -> int:
    t0 = time.monotonic()
    if restore_from and postgres.initialised(profile):
        raise SystemExit(f"{profile.pgdata} holds a cluster already: a restore starts from a clean directory "
                         f"(make down, remove {profile.dir})")
    profile.logs.mkdir(parents=True, exist_ok=True)
    render_nginx(profile)
    services.start_supervisord(profile)
    start_databases(profile, restore_from)
    start_object_store(profile, restore_from)
    profile.write_mlflow_auth_ini()
    services.start(profile, "mlflow", "prefect")
    services.wait_for(lambda: services.http_ok(f"{profile.mlflow_uri}/health"), 180, "MLflow", profile.logs / "mlflow.log")
    services.wait_for(lambda: services.http_ok(f"{profile.prefect_api}/health"), 300, "Prefect", profile.logs / "prefect.log")
    configure_prefect(profile)
    configure_dvc(profile)
    if restore_from and (profile.root / "dvc.lock").is_file():
        run(["dvc", "pull"], profile, timeout=1800)
        say("data versions pulled from the DVC remote (dvc.lock)")
    services.start(profile, "worker", "proxy")
    services.wait_for(lambda: services.port_open(profile.port("proxy")), 30, "nginx", profile.logs / "nginx-error.log")
    os.environ.update(profile.client_env())
    from mmcore.serving.bluegreen import deploy

    state = deploy(profile)
    say(f"serving {state['bento']} behind {profile.proxy_url}" if state else
        f"no champion yet: {profile.proxy_url} answers 503 until the first promotion")
    say(f"up in {time.monotonic() - t0:.0f} s")
    return status(profile)


def down(profile: Profile) -> int:
    if not services.supervisord_running(profile):
        say("the profile is not running")
        return 0
    pid = int((profile.run / "supervisord.pid").read_text())
    services.ctl(profile, "shutdown")     # stops the programs in reverse priority, then itself
    services.wait_for(lambda: not services.alive(pid), 300, "supervisord to stop its programs and exit",
                      profile.logs / "supervisord.log")
    for conf in (profile.dir / "supervisor").glob("bento-*.conf"):
        conf.unlink()
    (profile.run / "live.json").unlink(missing_ok=True)
    if (profile.root / ".dvc" / "config.local").is_file():   # back to the committed remote until the next `up`
        subprocess.run(["dvc", "remote", "remove", "--local", "profile"], cwd=profile.root, capture_output=True)
    say("stopped")
    return 0


def status(profile: Profile) -> int:
    """What runs where; exit 1 when something that `up` starts is not answering."""
    from mmcore.serving.bluegreen import live

    states = services.states(profile)
    if not states:
        say("not running (make up)")
        return 1
    checks = {"postgres": (postgres.ready(profile), f"127.0.0.1:{profile.port('pg')} (databases {', '.join(DATABASES)})"),
              "s3": (services.port_open(profile.port("s3")) if profile.s3_local else objectstore.bucket_exists(profile),
                     f"{profile.s3_endpoint or 'AWS S3'} bucket {profile.bucket}"),
              "mlflow": (services.http_ok(f"{profile.mlflow_uri}/health"), profile.mlflow_uri),
              "prefect": (services.http_ok(f"{profile.prefect_api}/health"), profile.prefect_api.removesuffix("/api")),
              "worker": (states.get("worker") == "RUNNING", f"pool {POOL}"),
              "proxy": (services.http_ok(f"{profile.proxy_url}/readyz"), profile.proxy_url)}
    bad = 0
    for name, (ok, where) in checks.items():
        state = states.get(name, "-") if name != "s3" or profile.s3_local else "external"
        bad += not ok and not (name == "proxy" and live(profile) is None)
        print(f"  {name:9} {state:9} {'ok  ' if ok else 'DOWN'} {where}")
    serving = live(profile)
    for name, state in sorted(states.items()):
        if name.startswith("bento-"):
            mark = "live" if serving and name == f"bento-{serving['colour']}" else ""
            print(f"  {name:9} {state:9} {mark:4} {serving['bento'] if mark else ''}")
    if serving is None:
        print("  no bento deployed yet (the first promotion deploys one)")
    return 1 if bad else 0


def backup(profile: Profile) -> int:
    """pg_dump of both databases, then the bucket's manifest: every object the dumps can point at was
    written before they were taken, so the manifest lists it (objects written later are harmless)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = profile.path("PROFILE_BACKUP_DIR") / stamp
    out.mkdir(parents=True, exist_ok=False)
    for db in DATABASES:
        postgres.dump(profile, db, out / f"{db}.dump")
    objects = objectstore.manifest(profile)
    (out / "manifest.json").write_text(json.dumps(objects, indent=1))
    from mmcore.serving.bluegreen import live

    meta = {"created": stamp, "databases": {db: f"{db}.dump" for db in DATABASES}, "bucket": profile.bucket,
            "endpoint": profile.s3_endpoint or "aws", "objects": len(objects),
            "bytes": sum(o["size"] for o in objects), "serving": live(profile)}
    (out / "backup.json").write_text(json.dumps(meta, indent=2))
    say(f"backup in {out}: {', '.join(f'{db}.dump' for db in DATABASES)}, manifest of {len(objects)} objects")
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmcore.profile", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start everything (make up)")
    u.add_argument("--restore", type=Path, help="a backup folder: restore it into this new profile")
    for name in ("down", "status", "backup", "env"):
        sub.add_parser(name)
    args = ap.parse_args(argv)
    profile = Profile.load(create_env=args.command == "up")
    if args.command == "env":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in profile.client_env().items()))
        return 0
    try:
        if args.command == "up":
            return up(profile, args.restore)
        return {"down": down, "status": status, "backup": backup}[args.command](profile)
    except RuntimeError as e:
        print(f"error: {e}\n(logs: {profile.logs}; `make status` says what runs)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
