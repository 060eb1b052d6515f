"""The production profile's settings and files, without starting it (the flows tests start it)."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from mmcore.profile.settings import Profile, ensure_env_file, values

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    shutil.copytree(ROOT / "profile", tmp_path / "profile")
    generated = {k: "x" for k, v in dotenv_values(tmp_path / ".env.example").items() if v == "generate"}
    for key in values(tmp_path, generated):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def test_the_first_up_writes_env_with_fresh_secrets_and_keeps_it(root: Path) -> None:
    env = ensure_env_file(root)
    first = env.read_text()
    secrets = values(root)
    assert env.stat().st_mode & 0o777 == 0o600
    generated = ("PROFILE_PG_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PARCEL_API_KEY",
                 "PROFILE_PREFECT_PASSWORD", "PROFILE_MLFLOW_PASSWORD", "PROFILE_MLFLOW_SECRET_KEY")
    assert "generate" not in {secrets[k] for k in generated}
    assert len({secrets[k] for k in generated}) == len(generated)
    assert "# PostgreSQL" in first                       # the documentation comes along
    ensure_env_file(root)
    assert env.read_text() == first                      # a second `up` never rotates them


def test_a_secret_still_saying_generate_is_refused_with_what_to_do(root: Path) -> None:
    with pytest.raises(SystemExit, match="PROFILE_PG_PASSWORD.*run `make up`, which generates them"):
        values(root)


def test_environment_overrides_env_file_which_overrides_the_example(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_env_file(root)
    with open(root / ".env", "a") as f:
        f.write("PROFILE_PG_PORT=6000\nPROFILE_MLFLOW_PORT=6001\n")
    monkeypatch.setenv("PROFILE_MLFLOW_PORT", "7001")
    p = Profile.load(root, overrides={"PROFILE_PREFECT_PORT": "8002"})
    assert (p.port("pg"), p.port("mlflow"), p.port("prefect")) == (6000, 7001, 8002)
    assert p.port("proxy") == 58080                       # the example's default
    assert p.dir == root / ".profile" and p.pgdata == root / ".profile" / "pg"


def test_flows_see_only_the_tracking_uri_the_api_url_and_the_bucket(root: Path) -> None:
    ensure_env_file(root)
    local = Profile.load(root).client_env()
    assert local["PREFECT_API_URL"] == "http://127.0.0.1:54200/api"
    assert local["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:55000"
    assert local["S3_ENDPOINT_URL"] == "http://127.0.0.1:59000"
    aws = Profile.load(root, overrides={"PROFILE_S3_LOCAL": "0"}).client_env()
    assert "S3_ENDPOINT_URL" not in aws and "MLFLOW_S3_ENDPOINT_URL" not in aws   # boto3's own AWS endpoints
    other = Profile.load(root, overrides={"PROFILE_S3_LOCAL": "0", "S3_ENDPOINT_URL": "https://s3.example"})
    assert other.client_env()["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.example"


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is installed by `make install`")
def test_the_rendered_nginx_config_is_valid_and_points_at_the_live_bento(root: Path) -> None:
    from mmcore.profile.__main__ import render_nginx
    from mmcore.serving.bluegreen import upstream

    ensure_env_file(root)
    p = Profile.load(root)
    p.run.mkdir(parents=True)
    p.logs.mkdir(parents=True)
    render_nginx(p)
    conf = p.dir / "nginx" / "nginx.conf"
    check = subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(conf), "-e", str(p.logs / "t.log")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "127.0.0.1:58101" in (p.dir / "nginx" / "upstream.conf").read_text()
    upstream(p, 58102)
    assert "127.0.0.1:58102" in (p.dir / "nginx" / "upstream.conf").read_text()
    assert "127.0.0.1:58101" not in (p.dir / "nginx" / "upstream.conf").read_text()


def test_a_secret_added_to_the_example_later_is_appended_without_rotating_the_others(root: Path) -> None:
    env = ensure_env_file(root)
    before = values(root)
    env.write_text("".join(line + "\n" for line in env.read_text().splitlines() if not line.startswith("PARCEL_API_KEY=")))
    ensure_env_file(root)
    after = values(root)
    assert after["PARCEL_API_KEY"] not in ("", "generate", before["PARCEL_API_KEY"])
    assert {k: v for k, v in after.items() if k != "PARCEL_API_KEY"} == \
        {k: v for k, v in before.items() if k != "PARCEL_API_KEY"}


def test_clients_get_the_credentials_and_no_secret_is_on_a_command_line(root: Path, tmp_path_factory) -> None:
    """`ps` shows every command line to everyone on the machine: the supervisor programs' commands, expanded
    as supervisord expands them, hold none of the profile's secrets; the servers read them from their
    environment, the clients get theirs from client_env."""
    from mmcore.serving.bluegreen import program

    fake_bin = tmp_path_factory.mktemp("pgbin")
    (fake_bin / "postgres").write_text("")
    ensure_env_file(root)
    p = Profile.load(root, overrides={"PROFILE_PG_BIN": str(fake_bin)})
    client, servers = p.client_env(), p.supervisor_env()
    assert client["PREFECT_API_AUTH_STRING"] == f"parcel:{p.env['PROFILE_PREFECT_PASSWORD']}"
    assert servers["PREFECT_SERVER_API_AUTH_STRING"] == client["PREFECT_API_AUTH_STRING"]
    assert (client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"]) == \
        (servers["MLFLOW_AUTH_ADMIN_USERNAME"], servers["MLFLOW_AUTH_ADMIN_PASSWORD"])
    assert client["PARCEL_API_KEY"] == p.env["PARCEL_API_KEY"]
    assert p.env["PROFILE_PG_PASSWORD"] in servers["MLFLOW_BACKEND_STORE_URI"]

    conf = configparser.RawConfigParser()
    conf.read(root / "profile" / "supervisord.conf")
    conf.read(program(p, "blue", "parcel-condition:v1", 58101))          # a bento, as blue/green adds it
    commands = [conf.get(s, "command") for s in conf.sections() if s.startswith("program:")]
    assert len(commands) == 7
    expanded = [re.sub(r"%\(ENV_(\w+)\)s", lambda m: servers[m.group(1)], c) for c in commands]
    assert any("--app-name basic-auth" in c for c in expanded)
    secrets = {k: v for k, v in p.env.items() if "PASSWORD" in k or "SECRET" in k or k == "PARCEL_API_KEY"}
    leaked = {k for k, v in secrets.items() for c in expanded if v in c}
    assert leaked == set(), leaked

    ini = p.write_mlflow_auth_ini()
    assert ini.stat().st_mode & 0o777 == 0o600
    auth = configparser.ConfigParser()
    auth.read(ini)
    assert auth["mlflow"]["database_uri"].endswith("/mlflow_auth") and "admin_password" not in auth["mlflow"]


def test_production_waits_are_the_examples_and_reach_prefect_dvc_and_the_flow(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests run the profile with short waits (tests/settings.py); production keeps these: a run silent for
    90 s (three 30 s heartbeats) is crashed, DVC gives the bucket 10 s to connect and 30 s to answer, and a
    transient failure is retried after 10, 20 and 40 s."""
    from datetime import timedelta

    from flows.retrain import push_data, repro
    from mmcore.profile.__main__ import configure_dvc, zombie_automation

    ensure_env_file(root)
    p = Profile.load(root)
    assert zombie_automation().trigger.within == timedelta(seconds=90)
    assert p.supervisor_env()["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert p.supervisor_env()["PARCEL_RETRY_DELAY_S"] == "10"
    assert "PARCEL_RETRY_DELAY_S" not in os.environ      # so the flow module read its default: the example's
    assert repro.retry_delay_seconds == push_data.retry_delay_seconds == [10, 20, 40]
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")   # this venv's dvc
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    configure_dvc(p)
    local = configparser.ConfigParser()
    local.read(root / ".dvc" / "config.local")
    remote = local["'remote \"profile\"'"]
    assert (remote["connect_timeout"], remote["read_timeout"]) == ("10", "30")
