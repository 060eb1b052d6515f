"""supervisor runs the profile's processes; these are the few calls the profile makes to it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

from mmcore.profile.settings import Profile

CONF = Path("profile") / "supervisord.conf"
BIN = Path(sys.executable).parent   # supervisor comes with the project's environment


def environ(profile: Profile) -> dict[str, str]:
    return {**os.environ, **profile.supervisor_env()}


def conf(profile: Profile) -> str:
    return str(profile.root / CONF)


def supervisord_running(profile: Profile) -> bool:
    return ctl(profile, "pid", check=False).stdout.strip().isdigit()


def start_supervisord(profile: Profile) -> None:
    """supervisord daemonises itself; its programs inherit the profile's environment."""
    if supervisord_running(profile):
        return
    for d in (profile.logs, profile.run, profile.dir / "supervisor"):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "supervisord"), "-c", conf(profile)], env=environ(profile), check=True, cwd=profile.root)
    wait_for(lambda: supervisord_running(profile), 30, "supervisord")


def ctl(profile: Profile, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "supervisorctl"), "-c", conf(profile), *args], env=environ(profile), text=True,
                          capture_output=True, cwd=profile.root)
    # supervisorctl exits non-zero for `status` whenever a program is stopped: callers read its output
    if check and proc.returncode != 0 and args[0] != "status":
        raise RuntimeError(f"supervisorctl {' '.join(args)} failed: {proc.stdout.strip()} {proc.stderr.strip()}")
    return proc


def states(profile: Profile) -> dict[str, str]:
    """Program name -> supervisor state (RUNNING, STOPPED, EXITED, FATAL, ...)."""
    if not supervisord_running(profile):
        return {}
    out = ctl(profile, "status").stdout
    return {parts[0]: parts[1] for line in out.splitlines() if len(parts := line.split()) >= 2}


def start(profile: Profile, *names: str) -> None:
    todo = [n for n in names if states(profile).get(n) != "RUNNING"]
    if todo:
        ctl(profile, "start", *todo)


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = f"\nlast lines of {log}:\n" + "\n".join(log.read_text().splitlines()[-20:]) if log and log.is_file() else ""
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s{tail}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False
