"""Who may see the Web UI, and which POSTs it accepts.

Why each piece:
  * ``auth(request) -> bool``: the host application decides who is an admin (its
    session, its user model); kiq only asks. ``BasicAuth`` is the one kiq ships, for
    ``kiq web`` on its own. A refused request gets 401 with a Basic challenge when the
    hook is a BasicAuth, else 403.
  * Cross-site requests: a POST is accepted when the browser says it comes from this
    origin (``Sec-Fetch-Site: same-origin``, Sidekiq 8.1's rule, or an ``Origin`` whose
    host is the request's ``Host``). A browser that sends neither (old ones, or a
    client like curl) must post back the CSRF token kiq put in a signed cookie
    (double submit): a page on another site can neither read the cookie nor forge
    its HMAC. A header that names another site is refused outright.
  * The Host header (DNS rebinding, issue 12): a page on ``attacker.example`` whose
    name the attacker re-points at 127.0.0.1 is same-origin with itself, so the
    browser lets it read and post to the UI; only the Host it sends gives it away.
    With no ``auth`` hook the UI answers only to loopback names, to the address the
    request reached (an IP literal, which no rebinding can forge) and to the names in
    ``allowed_hosts``; anything else is a 400 saying how to allow a name. With an auth
    hook any Host passes unless ``allowed_hosts`` is given: credentials and session
    cookies are per site, so a rebound page has none. Starlette's
    TrustedHostMiddleware does not fit: it cannot allow the server's own address, it
    splits ``[::1]:7433`` at the first colon, and it answers a bare "Invalid host header".
  * Headers on every response, Guard's own 400/401/403 included: a strict
    Content-Security-Policy (no inline script or style; the UI's own ``/static``
    only), no framing by other sites, no sniffing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Auth = Callable[[HTTPConnection], bool | Awaitable[bool]]
log = logging.getLogger("kiq.web")

CSRF_COOKIE: Final = "kiq_csrf"
CSRF_FIELD: Final = "authenticity_token"  # Sidekiq's form field name
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "::1")
HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "SAMEORIGIN",
    "referrer-policy": "same-origin",
}


class BasicAuth:
    """HTTP basic auth against one user and password (constant-time compare).

    Example::

        app = create_app(auth=BasicAuth("admin", os.environ["KIQ_WEB_PASSWORD"]))
    """

    challenge: Final = 'Basic realm="kiq", charset="UTF-8"'

    def __init__(self, user: str, password: str) -> None:
        if not user or not password:
            raise ValueError("BasicAuth: user and password must both be non-empty")
        self._expected = f"{user}:{password}".encode()

    def __call__(self, request: HTTPConnection) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)


def basic_auth(user: str, password: str) -> BasicAuth:
    """An ``auth`` hook that accepts exactly this user and password."""
    return BasicAuth(user, password)


class Tokens:
    """CSRF tokens and their signed cookie form ``<token>.<hmac>``."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def new(self) -> str:
        return secrets.token_urlsafe(32)

    def sign(self, token: str) -> str:
        mac = hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()
        return f"{token}.{mac}"

    def verified(self, cookie: str | None) -> str | None:
        """The token inside a cookie whose signature is ours, else None."""
        token, dot, _ = (cookie or "").rpartition(".")
        if not dot or not token:
            return None
        return token if hmac.compare_digest(self.sign(token), cookie or "") else None


def origin_verdict(headers: Mapping[str, str]) -> bool | None:
    """True: same origin; False: another site (refuse); None: the browser did not say."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        return origin != "null" and urlsplit(origin).netloc.lower() == host.lower()
    return None


def post_refusal(
    headers: Mapping[str, str], cookie: str | None, field: str | None, tokens: Tokens
) -> str | None:
    """Why a POST must be refused (a message for the 403), or None to accept it."""
    verdict = origin_verdict(headers)
    if verdict is True:
        return None
    if verdict is False:
        return "Forbidden: a cross-site request (Sec-Fetch-Site/Origin name another site)"
    token = tokens.verified(cookie)
    if token is None or field is None or not hmac.compare_digest(token, field):
        return (
            "Forbidden: missing or wrong CSRF token; reload the page and try again "
            f"(forms must send {CSRF_FIELD} from the {CSRF_COOKIE} cookie)"
        )
    return None


def host_name(header: str) -> str:
    """The name in a Host header, lowercased, without port, IPv6 brackets or final dot."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class Hosts:
    """Which Host headers the UI answers to (see the module docstring).

    ``allowed``: names (``"kiq.example.com"``), ``"*.example.com"`` for its
    subdomains, or ``"*"`` for any; the loopback names are always allowed. None: only
    loopback and the server's own address, or any host at all when ``any_host``.
    """

    def __init__(self, allowed: Iterable[str] | None, *, any_host: bool = False) -> None:
        names = [] if allowed is None else [name.strip().lower() for name in allowed]
        self.any = "*" in names or (allowed is None and any_host)
        self.names = {host_name(n) for n in names if not n.startswith("*")} | set(LOOPBACK_HOSTS)
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))

    def allows(self, header: str | None, server: str | None) -> bool:
        if self.any or header is None:  # no Host (HTTP/1.0): no name a browser could send
            return True
        name = host_name(header)
        return (
            name in self.names
            or (server is not None and name == host_name(server))
            or name.endswith(self.suffixes)
        )

    def refusal(self, header: str) -> str:
        name = host_name(header)[:100]
        return (
            f"Bad Request: this kiq Web UI does not answer to the host name {name!r}, which "
            "could be a DNS rebinding attack. If you reach it under this name, allow it: "
            f"create_app(allowed_hosts=[{name!r}]) or kiq web --allowed-host {name}."
        )


class Guard:
    """ASGI middleware: the Host check, the auth hook, the CSRF cookie, security headers.

    The POST check itself needs the form body, so the action endpoints call
    ``post_refusal`` after parsing it; Guard makes sure every page carries a token.
    """

    def __init__(self, app: ASGIApp, auth: Auth | None, tokens: Tokens, hosts: Hosts) -> None:
        self.app = app
        self.auth = auth
        self.tokens = tokens
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie: str | None = None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if cookie is not None:
                    headers.append("set-cookie", cookie)
            await send(message)

        conn = HTTPConnection(scope)
        host = conn.headers.get("host")
        server = scope.get("server")
        if host is not None and not self.hosts.allows(host, server[0] if server else None):
            refusal = PlainTextResponse(self.hosts.refusal(host), 400)
            await refusal(scope, receive, send_with_headers)
            return
        try:
            allowed = self.auth is None or await self._allowed(conn)
        except Exception:  # the host application's hook: its traceback is for the log
            log.exception("Web UI: the auth hook %r failed", self.auth)
            failure = PlainTextResponse(
                "Internal error in the auth hook; the server log has the traceback.", 500
            )
            await failure(scope, receive, send_with_headers)
            return
        if not allowed:
            challenge = getattr(self.auth, "challenge", None)
            status = 401 if challenge else 403
            headers = {"www-authenticate": challenge} if challenge else {}
            text = "Authentication required" if challenge else "Forbidden"
            denial = PlainTextResponse(text, status, headers=headers)
            await denial(scope, receive, send_with_headers)
            return
        token = self.tokens.verified(conn.cookies.get(CSRF_COOKIE))
        if token is None:
            token = self.tokens.new()
            cookie = self._cookie(scope, token)
        scope.setdefault("state", {})["csrf_token"] = token
        await self.app(scope, receive, send_with_headers)

    async def _allowed(self, conn: HTTPConnection) -> bool:
        assert self.auth is not None
        # A sync hook may hit a database: run it in the threadpool. An async one
        # returns its coroutine from there, awaited here on the event loop.
        verdict = await run_in_threadpool(self.auth, conn)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def _cookie(self, scope: Scope, token: str) -> str:
        path = scope.get("root_path") or "/"
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        value = self.tokens.sign(token)
        return f"{CSRF_COOKIE}={value}; Path={path}; HttpOnly; SameSite=Strict{secure}"
