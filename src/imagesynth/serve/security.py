"""The studio's security layer, one ASGI middleware in front of every route.

- Host check (DNS rebinding): on a loopback bind, a request whose Host is not this server's
  loopback address is refused, so a page on evil.example resolved to 127.0.0.1 reads nothing.
- Token: with `--token`, every route (page, API, stream, docs) needs `Authorization: Bearer T`
  or the HttpOnly cookie that `/login?token=T` sets; without it, 401.
- Cross-site writes: a state-changing request (POST, PUT, PATCH, DELETE) is refused when
  `Sec-Fetch-Site` says cross-site or its `Origin` is not this server; its body must be JSON,
  which a cross-site form or "simple request" cannot send without a CORS preflight, and no
  CORS header is ever granted.
- Body cap: bodies over `max_body` bytes are refused with 413, counted as they stream in.
- Every response carries nosniff, frame-deny, no-referrer and a same-origin CSP.
- Error texts that reach clients go through `scrub_paths`: no server path in any response.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

COOKIE = "imagesynth_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]


#: an absolute POSIX path of two or more parts (URL paths of the API itself are left alone)
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~>-])/(?!api/|sdapi/|static/)[^\s'\"/:,;()\[\]<>]+"
                            r"(?:/[^\s'\"/:,;()\[\]<>]+)+/?")


def scrub_paths(text: str, roots: dict[str, str]) -> str:
    """`text` with the server's folders named, not spelled out (errors reach clients as JSON).

    Known roots become their label ("<studio data>/uploads/x.png"); any other absolute path
    becomes its last part, so no message a library raises puts a server path in a response.
    """
    for root, label in sorted(roots.items(), key=lambda item: -len(item[0])):
        if root and root != "/":
            text = text.replace(root, label)
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def path_roots(data_dir: Path) -> dict[str, str]:
    """The folders `scrub_paths` names: the data folder, imagesynth's home, the user's home."""
    from ..paths import home

    roots = {str(data_dir): "<studio data>", str(Path.home()): "~"}
    try:
        roots[str(home())] = "<imagesynth home>"
    except OSError:
        pass
    for path in list(roots):
        roots.setdefault(os.path.realpath(path), roots[path])
    return roots


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(host: str, port: int) -> set[str]:
    """Host header values a loopback-bound server answers to."""
    names = {host, "127.0.0.1", "localhost", "[::1]"}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return {f"{name}:{port}".lower() for name in names} | (
        {name.lower() for name in names} if port == 80 else set())


class SecurityMiddleware:
    """Host, token, cross-site and body-size checks; security headers on every response."""

    def __init__(self, app, *, token: str | None, allowed_hosts: set[str] | None,
                 max_body: int):
        self.app, self.token, self.allowed_hosts, self.max_body = (app, token, allowed_hosts,
                                                                    max_body)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # the studio streams over SSE; no socket is served
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        host = headers.get("host", "").lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return await _refuse(send, 403, "host", f"Host {host!r} is not this server",
                                 "open the studio at the address `imagesynth serve` printed")
        if self.token is not None and not self._authorised(scope, headers):
            if method == "GET" and "text/html" in headers.get("accept", ""):
                return await _sign_in_page(send)  # a person at a browser, not an API client
            return await _refuse(send, 401, "token", "a valid token is required",
                                 "open the login link `imagesynth serve` printed, or send "
                                 "Authorization: Bearer TOKEN")
        if method not in SAFE_METHODS:
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return await _refuse(send, 403, "origin", "cross-site requests are refused",
                                     "call the API from the studio page or a local client")
            origin = headers.get("origin")
            scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
            if origin is not None and origin.lower() != f"{scheme}://{host}":
                return await _refuse(send, 403, "origin", f"Origin {origin!r} is not this server",
                                     "call the API from the studio page or a local client")
            length = headers.get("content-length")
            has_body = (length not in (None, "0")) or "transfer-encoding" in headers
            if has_body and not headers.get("content-type", "").lower().startswith(
                    "application/json"):
                return await _refuse(send, 415, "content-type", "request bodies must be JSON",
                                     "send Content-Type: application/json")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                return await _refuse(send, 413, "body", f"the body is over {self.max_body} bytes",
                                     "send a smaller image")
        return await self.app(scope, self._capped(receive, send), _with_headers(send))

    def _authorised(self, scope, headers: dict[str, str]) -> bool:
        if scope.get("path") == "/login" and scope.get("method") == "GET":
            return True  # the login route checks the token itself
        supplied = []
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            supplied.append(authorization[7:].strip())
        if "cookie" in headers:
            cookie = SimpleCookie()
            try:
                cookie.load(headers["cookie"])
            except Exception:  # a malformed cookie header is no credential
                cookie = SimpleCookie()
            if COOKIE in cookie:
                supplied.append(cookie[COOKIE].value)
        return any(hmac.compare_digest(value.encode(), self.token.encode()) for value in supplied)

    def _capped(self, receive, send):
        received = {"bytes": 0}

        async def capped_receive():
            message = await receive()
            if message.get("type") == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > self.max_body:
                    raise BodyTooLarge()
            return message

        return capped_receive


class BodyTooLarge(Exception):
    """A streamed body passed the cap (turned into 413 by the app's handler)."""


def login_token(query_string: bytes) -> str | None:
    """The `token` parameter of /login."""
    values = parse_qs(query_string.decode("latin-1")).get("token")
    return values[0] if values else None


def _with_headers(send):
    async def send_with_headers(message):
        if message["type"] == "http.response.start":
            names = {name for name, _ in message.get("headers", [])}
            message["headers"] = list(message.get("headers", [])) + [
                header for header in SECURITY_HEADERS if header[0] not in names]
        await send(message)

    return send_with_headers


SIGN_IN_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagesynth studio: sign in</title></head>
<body><main><h1>imagesynth studio</h1>
<p>This studio was started with a token. Open the login link that <code>imagesynth serve</code>
printed (<code>http://HOST:PORT/login?token=...</code>) to sign this browser in.</p>
<p>API clients send <code>Authorization: Bearer TOKEN</code> instead.</p></main></body></html>
"""


async def _sign_in_page(send) -> None:
    """401 as a page that tells the person how to sign in (no asset: they all need the token)."""
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(SIGN_IN_PAGE)).encode())]
                + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": SIGN_IN_PAGE})


async def _refuse(send, status: int, field: str, message: str, fix: str) -> None:
    body = json.dumps({"error": {"error": "Refused", "field": field, "message": message,
                                 "fix": fix}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())] + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})
