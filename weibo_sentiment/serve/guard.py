"""Request guards: Host header, cross-site requests, API key, content type, body size, and the adapter root.

Everything here refuses a request before it reaches the model, or a path before it reaches the disk.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Sequence
from pathlib import Path, PurePath
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.routing import Match

from .schemas import ApiError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def body_too_large(limit: int) -> str:
    """The 413 message, the same from the guard and from FastAPI."""
    return f"the request body is larger than {limit} bytes"


def default_max_body_bytes(max_texts: int, max_chars: int) -> int:
    # Room for the largest valid request even when every character is sent as a 6-byte `\uXXXX` escape.
    return 6 * max_texts * max_chars + 64 * 1024


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_JSON = "send a JSON body with 'Content-Type: application/json'"


class Guard:
    """Pure ASGI middleware: refuses a foreign Host header, a state-changing request from another site, a
    missing API key, a POST that is not JSON and an oversized body, before any of it reaches FastAPI.

    Cross-site requests: a page on any site may make the visitor's browser POST to a loopback server (and with
    --adapter-root swap its adapters), with cached Basic credentials too. A form or a "simple" fetch can only
    send text/plain, form or no Content-Type, so every POST must say application/json (which a browser sends
    cross-origin only after a CORS preflight, and this server approves none): FastAPI before 0.132 parsed a
    body with no Content-Type as JSON. On top, POST/PUT/PATCH/DELETE are refused when the browser says they
    come from elsewhere: an `Origin` other than this server's own (scheme aside: a TLS proxy may sit in front),
    or `Sec-Fetch-Site` other than same-origin or none. same-site is refused too: every port of localhost is
    the same site, so any other local web app would count. Clients that are not browsers send neither header.
    DELETE carries no body, so it needs no Content-Type: browsers always preflight it cross-origin.

    Behind a reverse proxy, pass on the Host header the browser used (nginx: `proxy_set_header Host $host`),
    or the Origin check refuses the server's own page.

    Starlette's own body limit answers in plain text; every error here is JSON like the rest of the API.
    """

    def __init__(self, app, api_key: str | None, allowed_hosts: Sequence[str] | None, max_body_bytes: int,
                 routes: Sequence = ()):
        self.app = app
        self.routes = routes  # to tell a request some route takes from a wrong method or path (405, 404)
        self.api_key = api_key.encode() if api_key else None
        self.allowed_hosts = {h.lower().strip("[]").rstrip(".") for h in allowed_hosts} if allowed_hosts else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if self.allowed_hosts is not None and _host_name(headers.get("host", b"")) not in self.allowed_hosts:
            # A server answers only to its own names: a web page cannot reach it by DNS rebinding.
            return await _send_error(send, 400, "the Host header names another server (serve --allowed-hosts "
                                                "lists the names this one answers to)")
        method = scope["method"]
        if method in STATE_CHANGING:
            problem = _cross_site(headers)
            if problem:
                return await _send_error(send, 403, problem)
        if self.api_key is not None and not self._authorized(headers):
            return await _send_error(send, 401, "this server needs an API key: send 'Authorization: Bearer "
                                                "KEY' or 'X-API-Key: KEY'",
                                     [(b"www-authenticate", b'Basic realm="weibo-sentiment"')])
        if (method in ("POST", "PUT", "PATCH") and not is_json(headers.get("content-type", b""))
                and any(route.matches(scope)[0] == Match.FULL for route in self.routes)):
            # Only where a route takes the request: a wrong method or path still gets its 405 or 404.
            return await _send_error(send, 415, NOT_JSON)
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await _send_error(send, 413, body_too_large(self.max_body_bytes))
        received = 0

        async def limited_receive():
            # A chunked body has no length up front: count it as it arrives.
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413)
            return message

        await self.app(scope, limited_receive, send)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        offered = headers.get("x-api-key")
        auth = headers.get("authorization", b"")
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer":
            offered = value.strip()
        elif scheme.lower() == b"basic":
            # Browsers ask for a user name and password on a 401; the key goes in as the password.
            try:
                offered = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        return offered is not None and hmac.compare_digest(offered, self.api_key)


def _cross_site(headers: dict[str, bytes]) -> str | None:
    """Why a state-changing request looks like it came from a page on another site, or None."""
    site = headers.get("sec-fetch-site", b"").decode("latin-1").lower()
    if site and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site[:40]}): use this server's own page or a client"
    if "origin" not in headers:
        return None
    origin = headers["origin"].decode("latin-1")
    try:
        parts = urlsplit(origin)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        own = urlsplit(f"{parts.scheme}://{headers.get('host', b'').decode('latin-1')}")
        same = (parts.hostname is not None and parts.hostname == own.hostname
                and (parts.port or default) == (own.port or default))
    except ValueError:  # a malformed port
        same = False
    if not same:
        return f"cross-origin request refused (Origin: {origin[:100]}): use this server's own page or a client"
    return None


def is_json(content_type: bytes) -> bool:
    """Whether a Content-Type header value says application/json (parameters such as charset aside)."""
    return content_type.partition(b";")[0].strip().lower() == b"application/json"


def _host_name(host: bytes) -> str:
    host = host.decode("latin-1").lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return (host.rpartition(":")[0] if host.count(":") == 1 else host).rstrip(".")


async def _send_error(send, status: int, message: str, extra_headers: list | None = None) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host_names(host: str, extra: Sequence[str] = ()) -> list[str] | None:
    """The Host header names a server bound to `host` answers to: its loopback names, the bound name, and for a
    bind on all interfaces this machine's host name, FQDN and the addresses they resolve to; plus `extra`
    (--allowed-hosts). None (any Host) only when `extra` holds "*". Checked on every request: without it a web
    page can reach the server by DNS rebinding (its own name resolving to this server's address), and the
    browser then counts the request as same-origin, so the Origin check alone cannot stop it."""
    if "*" in extra:
        return None
    names = [*LOOPBACK_HOSTS, host.strip("[]")]
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        import socket

        own = {socket.gethostname(), socket.getfqdn()}
        for name in list(own):
            try:
                own.update(info[4][0] for info in socket.getaddrinfo(name, None))
            except OSError:  # a host name that does not resolve: the name itself is still accepted
                pass
        names += sorted(own)
    return [*dict.fromkeys(n.lower().rstrip(".") for n in [*names, *extra] if n)]


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning printed when `host` is not a loopback address (all interfaces, a LAN address, a name that
    is not localhost), else None."""
    if is_loopback(host):
        return None
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        where, who = f"all interfaces ({host or '*'})", "this machine"
    else:
        where, who = f"{host}, not a loopback address", "that address"
    return (f"warning: listening on {where}: anyone who can reach {who} can use the API"
            + ("" if api_key else "; consider --api-key"))


# ---- adapter paths from requests --------------------------------------------------------------------------
def resolve_adapter_path(root: Path, requested: str) -> Path:
    """An adapter directory named relative to `root`; anything that would lead outside it is refused."""
    if not requested or "\x00" in requested or "\\" in requested:
        raise ApiError(422, "path must be a relative path to an adapter directory inside the adapter root")
    rel = PurePath(requested)
    if rel.is_absolute() or ".." in rel.parts:
        raise ApiError(403, f"path {requested!r} must be relative to the adapter root, without '..'")
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ApiError(403, f"path {requested!r} leads outside the adapter root")
    if not full.is_dir():
        raise ApiError(404, f"no adapter directory {requested!r} in the adapter root")
    for child in full.iterdir():  # a link inside the folder must not pull files in from elsewhere either
        if not child.resolve().is_relative_to(root):
            raise ApiError(403, f"path {requested!r} holds a link that leads outside the adapter root")
    if not (full / "adapter_config.json").is_file():  # e.g. "." (the root itself): a folder, but no adapter
        raise ApiError(404, f"no adapter directory {requested!r} in the adapter root")
    return full
