"""The profile's PostgreSQL: one cluster under PROFILE_DIR/pg, a database each for Prefect and MLflow.

The server binaries refuse to run as root, so when the profile runs as root the cluster belongs to the
`postgres` account that Debian's package creates, and initdb runs as that account."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mmcore.profile.settings import DATABASES, Profile, postgres_bin


def as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def initialised(profile: Profile) -> bool:
    return (profile.pgdata / "PG_VERSION").is_file()


def initdb(profile: Profile) -> None:
    """A new cluster: password logins on loopback only, no Unix socket (nothing else shares the machine's)."""
    pgdata = profile.pgdata
    pgdata.mkdir(parents=True, exist_ok=True)
    for d in (profile.dir, pgdata):
        d.chmod(0o755 if d == profile.dir else 0o700)
    if os.geteuid() == 0:
        shutil.chown(pgdata, "postgres", "postgres")
    with tempfile.NamedTemporaryFile("w", dir=profile.dir, delete=False) as f:
        f.write(profile.env["PROFILE_PG_PASSWORD"])
    try:
        if os.geteuid() == 0:
            shutil.chown(f.name, "postgres", "postgres")
        subprocess.run(as_owner([str(postgres_bin(profile.env["PROFILE_PG_BIN"]) / "initdb"), "-D", str(pgdata),
                                 "-U", profile.env["PROFILE_PG_USER"], f"--pwfile={f.name}", "--auth-host=scram-sha-256",
                                 "--auth-local=peer", "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write("\n# the production profile (mmcore/profile/postgres.py)\nlisten_addresses = '127.0.0.1'\n"
                   "unix_socket_directories = ''\n")


def connect(profile: Profile, database: str = "postgres"):  # noqa: ANN201 (psycopg2 connection)
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=profile.port("pg"), user=profile.env["PROFILE_PG_USER"],
                            password=profile.env["PROFILE_PG_PASSWORD"], dbname=database, connect_timeout=3)


def ready(profile: Profile) -> bool:
    import psycopg2

    try:
        connect(profile).close()
        return True
    except psycopg2.OperationalError:
        return False


def create_databases(profile: Profile) -> list[str]:
    """The databases that are missing, created (empty: the servers migrate them on start)."""
    con = connect(profile)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            have = {r[0] for r in cur.fetchall()}
            made = [db for db in DATABASES if db not in have]
            for db in made:
                cur.execute(f'CREATE DATABASE "{db}"')
        return made
    finally:
        con.close()


def client_env(profile: Profile) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": profile.env["PROFILE_PG_PASSWORD"], "PGHOST": "127.0.0.1",
            "PGPORT": str(profile.port("pg")), "PGUSER": profile.env["PROFILE_PG_USER"]}


def tool(profile: Profile, name: str) -> str:
    return str(postgres_bin(profile.env["PROFILE_PG_BIN"]) / name)


def dump(profile: Profile, database: str, out: Path) -> None:
    """pg_dump's custom format: one consistent snapshot of the database, restorable with pg_restore."""
    subprocess.run([tool(profile, "pg_dump"), "-Fc", "--no-owner", "-f", str(out), database],
                   env=client_env(profile), check=True, capture_output=True, text=True)


def restore(profile: Profile, database: str, dump_file: Path) -> None:
    """Into an empty database made by create_databases (before the server that owns it starts)."""
    proc = subprocess.run([tool(profile, "pg_restore"), "--no-owner", "--exit-on-error", "-d", database, str(dump_file)],
                          env=client_env(profile), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pg_restore of {dump_file} into {database} failed: {proc.stderr[-2000:]}")


def table_sizes(profile: Profile, database: str) -> dict[str, tuple[int, int]]:
    """Rows (counted) and bytes on disk, indexes and TOAST included, of each table of a database:
    what the capacity sizing multiplies by runs per day."""
    con = connect(profile, database)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT schemaname, relname, pg_total_relation_size(relid) FROM pg_stat_user_tables")
            tables = cur.fetchall()
            out = {}
            for schema, name, size in tables:
                cur.execute(f'SELECT count(*) FROM "{schema}"."{name}"')
                out[name] = (cur.fetchone()[0], size)
        return out
    finally:
        con.close()
