"""Who may call what: the service's key (PARCEL_API_KEY), reviewers' own keys (PARCEL_REVIEWER_KEYS or
PARCEL_REVIEWER_KEYS_FILE), and the one setting that runs without keys on purpose (PARCEL_ALLOW_OPEN=1).

A guarded HTTP call needs header `x-api-key: <key>` or `Authorization: Bearer <key>` (what
`bentoml.SyncHTTPClient(token=)` sends). The service takes only its own key and the review app only
reviewer keys, so a reviewer cannot feed `/predict` (capture, the review queue and the drift triggers
learn from it) and a client holding the service's key cannot label. Nothing starts without keys unless
PARCEL_ALLOW_OPEN=1 says so; then every answer carries a warning header.
"""
from __future__ import annotations

import hmac
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

KEY_ENV = "PARCEL_API_KEY"
OPEN_ENV = "PARCEL_ALLOW_OPEN"
REVIEWERS_ENV = "PARCEL_REVIEWER_KEYS"
REVIEWERS_FILE_ENV = "PARCEL_REVIEWER_KEYS_FILE"
SERVICE = "service"                 # the caller's name when the service's key was sent
OPEN_CALLER = "anonymous"           # ... when the app runs open on purpose: what a label line then records
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
WARNING_HEADER = b"x-auth-warning"
logger = logging.getLogger("mmcore.auth")


class KeySettingError(ValueError):
    """A key setting that cannot be used; the message says which and how to fix it."""


def configured_key(env: Mapping[str, str] | None = None) -> str | None:
    return (os.environ if env is None else env).get(KEY_ENV) or None


def allow_open(env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(OPEN_ENV, "") == "1"


def parse_reviewer_keys(text: str, where: str) -> dict[str, str]:
    """`name:key` entries separated by commas or lines (`#` starts a comment) -> {name: key}.
    A name or key twice is refused: a shared key would record the wrong labeller."""
    out: dict[str, str] = {}
    for n, entry in enumerate(e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")):
        if not entry:
            continue
        name, sep, key = (p.strip() for p in entry.partition(":"))
        if not sep or not key or not NAME_RE.fullmatch(name):
            raise KeySettingError(f"{where}: entry {n + 1} is not `name:key` (name: letters, digits, _ . @ -, "
                            "at most 64; key: not empty)")
        if name in out or key in out.values():
            raise KeySettingError(f"{where}: reviewer {name!r} or its key appears twice; each reviewer needs a key "
                                  "of their own")
        out[name] = key
    return out


def reviewer_keys(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Reviewers' keys from PARCEL_REVIEWER_KEYS and the file PARCEL_REVIEWER_KEYS_FILE names (both may
    be set); none of them may equal the service's key."""
    env = os.environ if env is None else env
    keys = parse_reviewer_keys(env.get(REVIEWERS_ENV, ""), REVIEWERS_ENV)
    if path := env.get(REVIEWERS_FILE_ENV):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeySettingError(f"{REVIEWERS_FILE_ENV}={path}: cannot read it ({exc})") from None
        from_file = parse_reviewer_keys(text, f"{REVIEWERS_FILE_ENV}={path}")
        if set(from_file) & set(keys) or set(from_file.values()) & set(keys.values()):
            raise KeySettingError(f"a reviewer is in both {REVIEWERS_ENV} and {REVIEWERS_FILE_ENV}: keep them in one")
        keys.update(from_file)
    if (service := configured_key(env)) and service in keys.values():
        raise KeySettingError(f"a reviewer key equals {KEY_ENV}: reviewers need keys of their own, which cannot "
                              "call /predict")
    return keys


def require_keys(keys: Mapping[str, str], what: str, settings: str, env: Mapping[str, str] | None = None) -> bool:
    """Refuse to start without keys unless PARCEL_ALLOW_OPEN=1; True when running open (warned)."""
    if keys:
        return False
    if not allow_open(env):
        raise SystemExit(f"{what} refuses to start without a key: set {settings}, or {OPEN_ENV}=1 to run it "
                         "open on purpose (anyone who can reach the port may call it)")
    logger.warning("%s runs OPEN (%s=1, no %s): anyone who can reach it may call every route", what, OPEN_ENV,
                   settings)
    return True


class ApiKeyMiddleware:
    """ASGI middleware: a guarded path needs one of `keys` (name -> key); the caller's name goes into
    the request's state (`request.state.caller`). A key of the other role (`refused`: name -> key) is a
    403 that says what it is for; any other key, or none, a 401 naming the headers. With no keys at all
    (open on purpose) every call passes and every answer carries the header x-auth-warning."""

    def __init__(self, app: Any, keys: Mapping[str, str] | None, guarded: Callable[[str], bool], hint: str = "",
                 refused: Mapping[str, str] | None = None, refused_error: str = "") -> None:
        self.app = app
        self.keys = [(name, key.encode("utf-8")) for name, key in (keys or {}).items()]
        self.refused = [key.encode("utf-8") for key in (refused or {}).values()]
        self.guarded = guarded
        self.error = "missing or wrong API key: send header x-api-key or Authorization: Bearer" + hint
        self.refused_error = refused_error
        self.warning = f"open on purpose ({OPEN_ENV}=1): no key is checked".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif not self.keys:
            scope.setdefault("state", {})["caller"] = OPEN_CALLER
            await self.app(scope, receive, self._warned(send))
        elif not self.guarded(scope.get("path", "")):
            await self.app(scope, receive, send)
        elif caller := self._caller(scope):
            scope.setdefault("state", {})["caller"] = caller
            await self.app(scope, receive, send)
        else:
            from starlette.responses import JSONResponse

            status, error = (403, self.refused_error) if self._is_refused(scope) else (401, self.error)
            await JSONResponse({"error": error}, status_code=status)(scope, receive, send)

    @staticmethod
    def _given(scope: dict) -> bytes:
        headers = dict(scope.get("headers") or [])
        return headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")

    def _caller(self, scope: dict) -> str | None:
        given, found = self._given(scope), None
        for name, key in self.keys:          # every key compared, in constant time each
            if hmac.compare_digest(given, key):
                found = name
        return found

    def _is_refused(self, scope: dict) -> bool:
        given = self._given(scope)
        return any([hmac.compare_digest(given, key) for key in self.refused])

    def _warned(self, send: Any) -> Callable[[dict], Any]:
        async def send_warned(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (WARNING_HEADER, self.warning)]}
            await send(message)
        return send_warned


def service_middleware(guarded: Callable[[str], bool], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The service's ApiKeyMiddleware arguments: its own key; reviewers' keys, when set here too, get a 403."""
    key = configured_key(env)
    return {"keys": {SERVICE: key} if key else {}, "guarded": guarded, "refused": reviewer_keys(env),
            "refused_error": "a reviewer key labels in the review app; it cannot call the service: "
                             f"send the service's key ({KEY_ENV})"}
