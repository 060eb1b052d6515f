"""The production profile's settings: `.env.example`'s defaults, then `.env`, then the environment.

Every address the flows need is derived here once, so that the pipeline itself only ever sees the three
things the default profile also reads: `PREFECT_API_URL`, `MLFLOW_TRACKING_URI` and the DVC remote.
"""
from __future__ import annotations

import glob
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

EXAMPLE, ENV_FILE = ".env.example", ".env"
GENERATE = "generate"
DATABASES = ("prefect", "mlflow", "mlflow_auth")    # mlflow_auth: the users of MLflow's basic-auth app


def ensure_env_file(root: Path) -> Path:
    """`.env` from `.env.example` on first use, each `generate` value replaced by a fresh secret; a `.env`
    from before a secret was added to the example gets that one appended (the others are never rotated)."""
    env = root / ENV_FILE
    lines, generated = [], []
    for line in (root / EXAMPLE).read_text().splitlines():
        key, sep, value = line.partition("=")
        generate = sep and not line.lstrip().startswith("#") and value.strip() == GENERATE
        lines.append(f"{key}={secrets.token_urlsafe(18)}" if generate else line)
        if generate:
            generated.append(lines[-1])
    if not env.is_file():
        env.write_text("\n".join(lines) + "\n")
        env.chmod(0o600)
    elif missing := [line for line in generated if line.partition("=")[0] not in dotenv_values(env)]:
        with env.open("a") as f:
            f.write("".join(f"{line}\n" for line in missing))
    return env


def values(root: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Defaults from `.env.example`, overridden by `.env`, by the process environment, then by `overrides`."""
    merged = {k: v or "" for k, v in dotenv_values(root / EXAMPLE).items()}
    if (root / ENV_FILE).is_file():
        merged.update({k: v or "" for k, v in dotenv_values(root / ENV_FILE).items()})
    merged.update({k: v for k, v in {**os.environ, **(overrides or {})}.items() if k in merged})
    unset = [k for k, v in merged.items() if v == GENERATE]
    if unset:
        raise SystemExit(f"{', '.join(unset)} still say '{GENERATE}': run `make up`, which generates them into "
                         f".env (keeping the secrets it holds), or set them in .env")
    return merged


def postgres_bin(configured: str) -> Path:
    found = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                   key=lambda p: int(Path(p).parent.name))
    if not found or not (Path(found[-1]) / "postgres").is_file():
        raise SystemExit("PostgreSQL server binaries not found: install Debian's package "
                         "(apt-get install postgresql) or set PROFILE_PG_BIN to the folder holding `postgres`")
    return Path(found[-1])


@dataclass(frozen=True)
class Profile:
    root: Path
    env: dict[str, str]

    @classmethod
    def load(cls, root: Path | None = None, create_env: bool = False,
             overrides: dict[str, str] | None = None) -> Profile:
        root = (root or Path.cwd()).resolve()
        if create_env:
            ensure_env_file(root)
        return cls(root, values(root, overrides))

    def path(self, key: str) -> Path:
        p = Path(self.env[key])
        return p if p.is_absolute() else self.root / p

    @property
    def dir(self) -> Path:
        return self.path("PROFILE_DIR")

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def run(self) -> Path:
        return self.dir / "run"

    @property
    def pgdata(self) -> Path:
        return self.dir / "pg"

    def port(self, name: str) -> int:
        return int(self.env[f"PROFILE_{name.upper()}_PORT"])

    @property
    def bento_ports(self) -> tuple[int, int]:
        blue, green = (int(p) for p in self.env["PROFILE_BENTO_PORTS"].split(","))
        return blue, green

    @property
    def s3_local(self) -> bool:
        return self.env["PROFILE_S3_LOCAL"] == "1"

    @property
    def s3_endpoint(self) -> str:
        """"" means AWS's own endpoints (boto3's default)."""
        if self.env["S3_ENDPOINT_URL"]:
            return self.env["S3_ENDPOINT_URL"]
        return f"http://127.0.0.1:{self.port('s3')}" if self.s3_local else ""

    @property
    def bucket(self) -> str:
        return self.env["PROFILE_BUCKET"]

    def database_url(self, name: str, driver: str = "psycopg2") -> str:
        return (f"postgresql+{driver}://{self.env['PROFILE_PG_USER']}:{self.env['PROFILE_PG_PASSWORD']}"
                f"@127.0.0.1:{self.port('pg')}/{name}")

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.port('prefect')}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.port('mlflow')}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port('proxy')}"

    @property
    def prefect_auth(self) -> str:
        """`user:password`, Prefect's basic-auth string (PREFECT_SERVER_API_AUTH_STRING, PREFECT_API_AUTH_STRING)."""
        return f"{self.env['PROFILE_PREFECT_USER']}:{self.env['PROFILE_PREFECT_PASSWORD']}"

    def client_env(self) -> dict[str, str]:
        """What a flow, a worker or a shell needs to use the profile: the two URLs and their credentials, the
        bucket's keys and the service's key."""
        env = {"PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_uri,
               "PREFECT_API_AUTH_STRING": self.prefect_auth,
               "MLFLOW_TRACKING_USERNAME": self.env["PROFILE_MLFLOW_USER"],
               "MLFLOW_TRACKING_PASSWORD": self.env["PROFILE_MLFLOW_PASSWORD"],
               "PARCEL_API_KEY": self.env["PARCEL_API_KEY"],
               "AWS_ACCESS_KEY_ID": self.env["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": self.env["AWS_SECRET_ACCESS_KEY"],
               "AWS_DEFAULT_REGION": self.env["AWS_DEFAULT_REGION"],
               "BENTOML_HOME": str(self.root / ".bentoml"), "PARCEL_PROFILE_DIR": str(self.dir)}
        if self.s3_endpoint:
            env["S3_ENDPOINT_URL"] = env["MLFLOW_S3_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint
        return env

    def supervisor_env(self) -> dict[str, str]:
        """The environment supervisord starts with: its config file reads these as %(ENV_...)s."""
        import getpass

        root_user = os.geteuid() == 0
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin"])
        return {**self.client_env(), "PATH": path,
                "PROFILE_ROOT": str(self.root), "PROFILE_DIR_ABS": str(self.dir), "PROFILE_LOGS": str(self.logs), "PROFILE_RUN": str(self.run),
                "PROFILE_PGDATA": str(self.pgdata), "PROFILE_PG_BIN": str(postgres_bin(self.env["PROFILE_PG_BIN"])),
                "PROFILE_PG_PORT": str(self.port("pg")), "PROFILE_PG_OS_USER": "postgres" if root_user else getpass.getuser(),
                "PROFILE_PG_AUTORESTART": "true" if self.env["PROFILE_PG_AUTORESTART"] == "1" else "false",
                "PROFILE_S3_PORT": str(self.port("s3")), "PROFILE_S3_DIR_ABS": str(self.path("PROFILE_S3_DIR")),
                "PROFILE_MLFLOW_PORT": str(self.port("mlflow")), "PROFILE_PREFECT_PORT": str(self.port("prefect")),
                **self.server_secrets(), "PROFILE_ARTIFACTS": f"s3://{self.bucket}/mlflow",
                "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url("prefect", "asyncpg"),
                "PREFECT_HOME": str(self.dir / "prefect"), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
                "PARCEL_RETRY_DELAY_S": self.env["PARCEL_RETRY_DELAY_S"],
                "PROFILE_NGINX_CONF": str(self.dir / "nginx" / "nginx.conf"),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True",
                "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    @property
    def mlflow_auth_ini(self) -> Path:
        return self.dir / "mlflow" / "basic_auth.ini"

    def server_secrets(self) -> dict[str, str]:
        """What the servers read from their environment, never from a command line (`ps` shows those): MLflow's
        database URI, its auth app's config file, admin and CSRF key; Prefect's auth string; reviewer keys."""
        return {"MLFLOW_BACKEND_STORE_URI": self.database_url("mlflow"),
                "MLFLOW_AUTH_CONFIG_PATH": str(self.mlflow_auth_ini),
                "MLFLOW_AUTH_ADMIN_USERNAME": self.env["PROFILE_MLFLOW_USER"],
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.env["PROFILE_MLFLOW_PASSWORD"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": self.env["PROFILE_MLFLOW_SECRET_KEY"],
                "PREFECT_SERVER_API_AUTH_STRING": self.prefect_auth,
                "PARCEL_REVIEWER_KEYS": self.env["PARCEL_REVIEWER_KEYS"]}

    def write_mlflow_auth_ini(self) -> Path:
        """MLflow's auth app reads its database from a file only: one only this user can read."""
        path = self.mlflow_auth_ini
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text("[mlflow]\ndefault_permission = READ\n"
                        f"database_uri = {self.database_url('mlflow_auth')}\n"
                        f"admin_username = {self.env['PROFILE_MLFLOW_USER']}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        return path
