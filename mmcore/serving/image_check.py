"""The serving image without torch: install a built bento's Python requirements into a fresh
virtualenv, check that torch and transformers are NOT importable there, serve the bento from that
venv and get one answer; measure the install against today's environment.

    python -m mmcore.serving.image_check --bento parcel-condition:v1 --out reports/bench/serving_image.json

BENTOML_HOME comes from the environment (default ./.bentoml). The requirements are the ones the
bento recorded (`<bento>/env/python/requirements.txt`, from requirements-serve.txt at build time),
installed with pip from the configured indexes (pip's download cache is used). "Today" is the
site-packages of the interpreter running this check: the training environment, torch included,
which is what the bento installed while bentofile.yaml named requirements.lock (plus torch).
Sizes are apparent file sizes, MB = 10^6 bytes. The report is JSON; the exit status is 0 only when
the venv lacks torch and transformers and the bento answered 200 with a label.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Iterable

MB = 1_000_000
FORBIDDEN = ("torch", "transformers")
SERVING_IMPORTS = ("bentoml", "onnxruntime", "tokenizers")
# torch, transformers and the CUDA/triton wheels torch pulls in (nvidia-ml-py is bentoml's, not torch's)
TORCH_STACK = re.compile(r"^(torch|transformers|triton|nvidia-(?!ml-py$).*)$")


def log(msg: str) -> None:
    print(f"[image_check] {msg}", file=sys.stderr, flush=True)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- sizes


def tree_bytes(root: Path) -> int:
    """Apparent size of every regular file under `root` (symlinks not followed)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, f)):
                total += st.st_size
    return total


def distributions(site: Path) -> dict[str, Any]:
    """The installed distributions under a site-packages directory, by canonical name."""
    from importlib.metadata import distributions as dists

    return {canon(d.metadata["Name"]): d for d in dists(path=[str(site)]) if d.metadata["Name"]}


def dist_bytes(dist: Any, site: Path) -> int:
    """Bytes of the files a distribution's RECORD lists (what uninstalling it would free)."""
    total = 0
    for f in dist.files or ():
        p = Path(dist.locate_file(f))
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def env_size(site: Path) -> dict[str, Any]:
    dists = distributions(site)
    return {"site_packages": str(site), "site_packages_mb": round(tree_bytes(site) / MB, 1), "packages": len(dists)}


def today_size(serving_names: Iterable[str]) -> dict[str, Any]:
    """The running interpreter's site-packages, with what torch/transformers and the rest of the
    training-only packages (those the serving venv lacks) weigh in it."""
    site = Path(sysconfig.get_paths()["purelib"])
    out = env_size(site)
    dists = distributions(site)
    stack = {n: dist_bytes(d, site) for n, d in dists.items() if TORCH_STACK.match(n)}
    serving = set(serving_names)
    extra = {n: dist_bytes(d, site) for n, d in dists.items() if n not in serving}
    top = sorted(extra.items(), key=lambda kv: -kv[1])[:10]
    out.update({
        "python": sys.executable,
        "torch_stack_mb": round(sum(stack.values()) / MB, 1),
        "torch_stack": {n: round(b / MB, 1) for n, b in sorted(stack.items(), key=lambda kv: -kv[1])},
        "torch_version": dists["torch"].version if "torch" in dists else None,
        "training_only_packages": len(extra),
        "training_only_mb": round(sum(extra.values()) / MB, 1),
        "training_only_largest_mb": {n: round(b / MB, 1) for n, b in top},
    })
    return out


# ---------------------------------------------------------------- venv and install


def make_venv(path: Path) -> Path:
    """A fresh venv from the running interpreter's base Python (no system site-packages)."""
    log(f"creating virtualenv {path} (Python {platform.python_version()})")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    return path / "bin" / "python"


def clean_env(venv: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for the venv's processes: nothing of the training env leaks in (no
    PYTHONPATH, no VIRTUAL_ENV of ours, the venv's bin first on PATH)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    bin_dir = Path(sys.executable).parent
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != bin_dir]
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        path.insert(0, str(venv / "bin"))
    env["PATH"] = os.pathsep.join(path)
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


def stream(cmd: list[str], env: dict[str, str], cwd: Path, keep: int = 60) -> tuple[int, list[str]]:
    """Run `cmd`, echoing its output to stderr as it comes; returns (status, last `keep` lines)."""
    tail: deque[str] = deque(maxlen=keep)
    with subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            print(f"  | {line.rstrip()}", file=sys.stderr, flush=True)
        rc = proc.wait()
    return rc, list(tail)


def pinned(requirements: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (the bento appends bentoml's own pin)."""
    out = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
        if m:
            out[canon(m.group(1))] = m.group(3)
    return out


def install(python: Path, requirements: Path, venv: Path, cwd: Path) -> dict[str, Any]:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
           "-r", str(requirements)]
    log(f"installing the bento's requirements ({len(pinned(requirements))} pins): {' '.join(cmd)}")
    start = time.monotonic()
    rc, tail = stream(cmd, clean_env(venv), cwd)
    wall = time.monotonic() - start
    if rc != 0:
        raise RuntimeError(f"pip install -r {requirements} failed ({rc}):\n" + "\n".join(tail))
    log(f"installed in {wall:.1f} s")
    rc, check_tail = stream([str(python), "-m", "pip", "check", "--disable-pip-version-check"], clean_env(venv), cwd,
                            keep=20)
    cache = subprocess.run([str(python), "-m", "pip", "cache", "dir", "--disable-pip-version-check"],
                           env=clean_env(venv), cwd=cwd, text=True, capture_output=True)
    return {"wall_s": round(wall, 1), "command": " ".join(cmd), "pip_check_ok": rc == 0,
            "pip_check": check_tail if rc else [],
            "pip_cache": cache.stdout.strip() if cache.returncode == 0 else None}


def importable(python: Path, module: str, venv: Path, cwd: Path) -> dict[str, Any]:
    """Whether `import module` succeeds in the venv's interpreter (run from an empty directory)."""
    proc = subprocess.run([str(python), "-c", f"import {module}"], env=clean_env(venv), cwd=cwd, text=True,
                          capture_output=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    return {"ok": proc.returncode == 0, "error": err[-1] if err and proc.returncode else None}


# ---------------------------------------------------------------- serve and ask


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def tail_of(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def one_record() -> dict[str, Any]:
    """One record in the API format: a 64x64 JPEG, a note, sensor channels."""
    try:
        from mmcore.bench.serve import synthetic_records

        rec = synthetic_records(1, seed=7, rows=30, image_side=64)[0]
    except ImportError:   # without the training env's extras: the same shape by hand
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (150, 110, 70)).save(buf, format="JPEG")
        trace = [float(i % 5) for i in range(30)]
        rec = {"image": base64.b64encode(buf.getvalue()).decode(),
               "sensor": {k: trace for k in ("temperature_c", "humidity_pct", "shock_g", "light_lux")}}
    rec["note"] = "box dented at one corner"
    return rec


def serve_and_ask(bentoml_bin: Path, tag: str, venv: Path, home: Path, log_path: Path,
                  ready_s: float = 180) -> dict[str, Any]:
    """`<venv>/bin/bentoml serve <tag>` on a free loopback port; wait for /readyz, POST one record to
    /predict, stop the server's whole process group. The server's output goes to `log_path`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # closed as in production: the caller's PARCEL_API_KEY, else a key made for this one check
    key = os.environ.get("PARCEL_API_KEY") or secrets.token_urlsafe(18)
    env = clean_env(venv, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True", DO_NOT_TRACK="1",
                    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PARCEL_API_KEY=key)
    cmd = [str(bentoml_bin), "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    log(f"starting {' '.join(cmd)} (log {log_path})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=log_path.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    result: dict[str, Any] = {"command": " ".join(cmd), "log": str(log_path)}
    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve {tag} exited with {proc.returncode} before /readyz; "
                                   f"log tail:\n{tail_of(log_path)}")
            try:
                if http("GET", f"{url}/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - start > ready_s:
                raise TimeoutError(f"{tag} not ready after {ready_s:.0f} s; log tail:\n{tail_of(log_path)}")
            time.sleep(0.5)
        result["ready_s"] = round(time.monotonic() - start, 1)
        log(f"ready after {result['ready_s']} s; POST /predict")
        headers = {"content-type": "application/json", "x-api-key": key}
        t0 = time.monotonic()
        status, body = http("POST", f"{url}/predict", json.dumps({"records": [one_record()]}).encode(), headers,
                            timeout=120)
        result["latency_ms"] = round((time.monotonic() - t0) * 1000, 1)
        result["status"] = status
        try:
            answer = json.loads(body)
        except ValueError:
            answer = body[:500].decode(errors="replace")
        first = answer[0] if isinstance(answer, list) and answer and isinstance(answer[0], dict) else {}
        result["label"] = first.get("label")
        result["model_version"] = first.get("model_version")
        if status != 200 or not result["label"]:
            result["answer"] = answer
            result["log_tail"] = tail_of(log_path, 30)
        log(f"/predict answered {status}, label {result['label']!r}")
    finally:
        stop(proc)
    return result


def stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the server's process group (bentoml serve and its workers), SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


# ---------------------------------------------------------------- the check


def bento_info(tag: str) -> tuple[str, Path, Path]:
    import bentoml

    bento = bentoml.bentos.get(tag)
    root = Path(bento.path)
    req = root / "env" / "python" / "requirements.txt"
    if not req.is_file():
        raise FileNotFoundError(f"bento {bento.tag} has no {req.relative_to(root)}")
    return str(bento.tag), root, req


def check(tag: str, venv: Path, keep_log: Path | None = None, ready_s: float = 180) -> dict[str, Any]:
    home = Path(os.environ.setdefault("BENTOML_HOME", str(Path.cwd() / ".bentoml"))).resolve()
    tag, bento_root, req = bento_info(tag)
    log(f"bento {tag} at {bento_root}")
    pins = pinned(req)
    work = venv.parent
    python = make_venv(venv)
    installed = install(python, req, venv, work)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               env=clean_env(venv), text=True, capture_output=True, check=True).stdout.strip())
    serving = env_size(site)
    serving_dists = distributions(site)
    unpinned = sorted(set(serving_dists) - set(pins) - {"pip", "setuptools", "wheel"})
    serving["unpinned_installed"] = unpinned
    imports = {m: importable(python, m, venv, work) for m in (*FORBIDDEN, *SERVING_IMPORTS)}
    for m, r in imports.items():
        log(f"import {m} in the serving venv: {'ok' if r['ok'] else 'fails (' + str(r['error']) + ')'}")
    today = today_size(serving_dists)
    log_path = keep_log or work / "server.log"
    served = serve_and_ask(venv / "bin" / "bentoml", tag, venv, home, log_path, ready_s)
    ok = (not any(imports[m]["ok"] for m in FORBIDDEN) and served.get("status") == 200 and bool(served.get("label")))
    return {
        "ok": ok,
        "bento": tag, "bento_path": str(bento_root), "bentoml_home": str(home),
        "requirements": str(req), "requirements_pinned": len(pins),
        "python": platform.python_version(),
        "install": installed,
        "serving": serving,
        "today": today,
        "ratio_serving_to_today": round(serving["site_packages_mb"] / today["site_packages_mb"], 3),
        "today_over_serving": round(today["site_packages_mb"] / serving["site_packages_mb"], 1),
        "saved_mb": round(today["site_packages_mb"] - serving["site_packages_mb"], 1),
        "imports": {m: r["ok"] for m, r in imports.items()},
        "import_errors": {m: r["error"] for m, r in imports.items() if r["error"]},
        "served": served,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "units": "MB = 10^6 bytes, apparent file sizes; today = the running interpreter's site-packages",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Install a bento's requirements in a fresh venv, check torch is "
                                             "absent, serve one request; JSON report.")
    ap.add_argument("--bento", default="parcel-condition:latest", help="bento tag in BENTOML_HOME")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/serving_image.json"))
    ap.add_argument("--venv", type=Path, default=None,
                    help="where to create the serving venv (kept); default: a temporary directory, removed")
    ap.add_argument("--ready-s", type=float, default=180, help="how long to wait for /readyz")
    args = ap.parse_args(argv)
    command = " ".join(["python", "-m", "mmcore.serving.image_check",
                        *(argv if argv is not None else sys.argv[1:])])
    tmp = None
    if args.venv is None:
        tmp = tempfile.mkdtemp(prefix="serving-image-")
        venv = Path(tmp) / "venv"
    else:
        venv = args.venv.resolve()
        venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = check(args.bento, venv, ready_s=args.ready_s)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    result["command"] = command
    if tmp:
        result["serving"]["venv"] = "(temporary, removed)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    s, t = result["serving"], result["today"]
    print(f"serving image check: {result['bento']} -> {args.out}")
    rows = [("serving venv site-packages MB", s["site_packages_mb"]), ("serving packages", s["packages"]),
            ("today site-packages MB", t["site_packages_mb"]), ("today packages", t["packages"]),
            ("torch stack in today's env MB", t["torch_stack_mb"]),
            ("serving / today", result["ratio_serving_to_today"]),
            ("install wall s", result["install"]["wall_s"]),
            ("torch importable", result["imports"]["torch"]),
            ("transformers importable", result["imports"]["transformers"]),
            ("/predict status", result["served"].get("status")), ("label", result["served"].get("label"))]
    for name, value in rows:
        print(f"  {name:<34}{value!s:>14}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
