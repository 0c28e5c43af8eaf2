"""Cross-site POSTs are refused, output carries a strict CSP, the auth hook and basic
auth gate every request, and the app works at any mount point."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import Mount

from kiq.api import ScheduledSet
from kiq.client import Client
from kiq.config import Config
from kiq.web import BasicAuth, create_app
from kiq.web.security import CSRF_COOKIE, HEADERS, Tokens, host_name, origin_verdict
from tests.web.conftest import (
    TestClient,  # re-imported there without the httpx warning
    WebClient,
)

WEB = Path(__file__).parents[2] / "src" / "kiq" / "web"


@pytest.fixture
def low_queue(config: Config) -> None:
    Client(config).push({"class": "HardJob", "args": [], "queue": "low"})


@pytest.mark.usefixtures("low_queue")
def test_post_without_token_or_origin_is_refused(web: WebClient, r: redis.Redis) -> None:
    """No Sec-Fetch-Site, no Origin and no token: 403, the queue is untouched."""
    response = web.http.post("/queues/low", data={"action": "delete"})
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert r.llen("queue:low") == 1


@pytest.mark.usefixtures("low_queue")
def test_post_with_a_wrong_token_is_refused(web: WebClient, r: redis.Redis) -> None:
    """A token that is not the cookie's is refused."""
    web.token()
    response = web.http.post(
        "/queues/low", data={"action": "delete", "authenticity_token": "forged"}
    )
    assert response.status_code == 403
    assert r.llen("queue:low") == 1


@pytest.mark.usefixtures("low_queue")
def test_post_with_a_forged_cookie_is_refused(config: Config, r: redis.Redis) -> None:
    """A cookie not signed with the app's secret does not validate its own token."""
    forged = Tokens(b"attacker").sign("tok")
    with TestClient(create_app(config), cookies={CSRF_COOKIE: forged}) as client:
        response = client.post(
            "/queues/low", data={"action": "delete", "authenticity_token": "tok"}
        )
    assert response.status_code == 403
    assert r.llen("queue:low") == 1


@pytest.mark.usefixtures("low_queue")
def test_cross_site_post_is_refused_even_with_a_token(web: WebClient, r: redis.Redis) -> None:
    """Sec-Fetch-Site: cross-site is refused whatever the form carries (Sidekiq 8.1)."""
    response = web.post(
        "/queues/low", {"action": "delete"}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    assert r.llen("queue:low") == 1


@pytest.mark.usefixtures("low_queue")
def test_same_origin_post_needs_no_token(web: WebClient, r: redis.Redis) -> None:
    """Sec-Fetch-Site: same-origin is enough."""
    response = web.http.post(
        "/queues/low", data={"action": "delete"}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert response.status_code == 200
    assert r.llen("queue:low") == 0


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("http://testserver", True), ("http://evil.example", False), ("null", False)],
)
@pytest.mark.usefixtures("low_queue")
def test_origin_header_decides_without_sec_fetch_site(
    web: WebClient, r: redis.Redis, origin: str, allowed: bool
) -> None:
    """An Origin naming this host is accepted; another host or ``null`` is refused."""
    response = web.http.post("/queues/low", data={"action": "delete"}, headers={"Origin": origin})
    assert response.status_code == (200 if allowed else 403)
    assert r.llen("queue:low") == (0 if allowed else 1)


@pytest.mark.parametrize("site", ["same-site", "none", "cross-site"])
def test_only_same_origin_counts_as_same_origin(site: str) -> None:
    """same-site (a sibling subdomain) and none are not same-origin."""
    assert origin_verdict({"sec-fetch-site": site, "origin": "http://h", "host": "h"}) is False


def test_csrf_cookie_is_http_only_and_strict(config: Config) -> None:
    """The token cookie cannot be read by scripts nor sent cross-site."""
    with TestClient(create_app(config)) as fresh:
        cookie = fresh.get("/busy").headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie


def test_pages_carry_a_strict_content_security_policy(web: WebClient) -> None:
    """No inline script, no other origin, no framing by other sites."""
    headers = web.get("/").headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'self'" in csp
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"


def test_nothing_is_loaded_from_another_site() -> None:
    """Templates and assets reference no external URL (no CDN), and have no inline script."""
    for path in [*WEB.glob("templates/*.html"), *WEB.glob("static/*")]:
        text = path.read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert all(url == "http://www.w3.org/2000/svg" for url in urls), (path, urls)
        assert not re.search(r"<script>(?!\s*</script>)", text), path
        assert " style=" not in text, path


def test_auth_hook_refusing_answers_403(config: Config) -> None:
    """auth(request) returning False answers 403 for every page."""
    with TestClient(create_app(config, auth=lambda request: False)) as client:
        assert client.get("/").status_code == 403
        assert client.get("/static/kiq.css").status_code == 403


def test_auth_hook_sees_the_request(config: Config) -> None:
    """The hook gets the request and may decide by its headers (or session, user...)."""

    def admin_only(request: HTTPConnection) -> bool:
        return request.headers.get("x-role") == "admin"

    with TestClient(create_app(config, auth=admin_only)) as client:
        assert client.get("/busy").status_code == 403
        assert client.get("/busy", headers={"x-role": "admin"}).status_code == 200


def test_async_auth_hook_is_awaited(config: Config) -> None:
    """An ``async def`` hook works as well."""

    async def allow(request: HTTPConnection) -> bool:
        return request.url.path != "/busy"

    with TestClient(create_app(config, auth=allow)) as client:
        assert client.get("/queues").status_code == 200
        assert client.get("/busy").status_code == 403


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_challenges_without_credentials(config: Config) -> None:
    """No credentials: 401 with a Basic challenge, so browsers ask for them."""
    with TestClient(create_app(config, auth=BasicAuth("admin", "s3cret"))) as client:
        response = client.get("/")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize(
    ("user", "password", "status"), [("admin", "s3cret", 200), ("admin", "no", 401)]
)
def test_basic_auth_checks_the_password(
    config: Config, user: str, password: str, status: int
) -> None:
    """The right user and password pass; anything else is 401."""
    with TestClient(create_app(config, auth=BasicAuth("admin", "s3cret"))) as client:
        assert client.get("/", headers=basic(user, password)).status_code == status


def test_mounted_app_links_under_its_mount_point(config: Config) -> None:
    """Mounted at /admin/kiq in a Starlette app, every link and asset is under it."""
    host = Starlette(routes=[Mount("/admin/kiq", app=create_app(config))])
    with TestClient(host) as client:
        page = client.get("/admin/kiq/").text
        assert 'href="/admin/kiq/static/kiq.css' in page
        assert 'href="/admin/kiq/retries"' in page
        assert client.get("/admin/kiq/static/kiq.js").status_code == 200


def test_mounted_app_redirects_under_its_mount_point(config: Config, r: redis.Redis) -> None:
    """A POST's redirect stays under the mount point."""
    Client(config).push({"class": "HardJob", "args": [], "queue": "low"})
    host = Starlette(routes=[Mount("/kiq", app=create_app(config))])
    with TestClient(host) as client:
        response = client.post(
            "/kiq/queues/low",
            data={"action": "delete"},
            headers={"Sec-Fetch-Site": "same-origin"},
            follow_redirects=False,
        )
    assert response.headers["location"] == "/kiq/queues"
    assert r.llen("queue:low") == 0


def test_prefix_serves_the_app_under_it(config: Config) -> None:
    """create_app(prefix="/kiq") answers at /kiq/ with links under it."""
    with TestClient(create_app(config, prefix="/kiq")) as client:
        assert 'href="/kiq/busy"' in client.get("/kiq/").text
        assert client.get("/busy").status_code == 404


def test_bad_prefix_is_refused(config: Config) -> None:
    """A prefix must start with / and not end with one."""
    with pytest.raises(ValueError, match="prefix"):
        create_app(config, prefix="kiq/")


# -- the Host header (DNS rebinding, issue 12) ---------------------------------------

REBOUND = {"Host": "attacker.example:7434", "Origin": "http://attacker.example:7434"}


def test_rebound_post_with_a_foreign_host_is_refused(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    """A page on a rebound name posts with its own Host and Origin: 400, nothing deleted."""
    ScheduledSet(config).schedule(time.time() + 60, {"class": "HardJob", "args": []})
    response = web.http.post("/scheduled/all/delete", headers=REBOUND, follow_redirects=False)
    assert response.status_code == 400
    assert "'attacker.example'" in response.text
    assert "allowed_hosts" in response.text
    assert r.zcard("schedule") == 1


@pytest.mark.usefixtures("low_queue")
def test_get_with_a_foreign_host_returns_no_data(web: WebClient) -> None:
    """Reads are refused too: a rebound page could otherwise read every job's arguments."""
    for path in ("/queues/low", "/stats", "/"):
        response = web.get(path, headers={"Host": "attacker.example"})
        assert response.status_code == 400, path
        assert "HardJob" not in response.text


@pytest.mark.parametrize(
    "host", ["localhost:7434", "LOCALHOST", "127.0.0.1:7434", "[::1]:7434", "localhost."]
)
def test_loopback_names_are_allowed(web: WebClient, host: str) -> None:
    """localhost, 127.0.0.1 and ::1, with or without a port, answer."""
    assert web.get("/queues", headers={"Host": host}).status_code == 200


def test_the_address_the_request_reached_is_allowed(config: Config) -> None:
    """Bound to 0.0.0.0, the UI answers to the IP a request came in on (the ASGI server)."""
    with TestClient(create_app(config), base_url="http://192.0.2.7:7433") as client:
        assert client.get("/queues").status_code == 200
        assert client.get("/queues", headers={"Host": "192.0.2.8:7433"}).status_code == 400


def test_allowed_hosts_adds_names_and_subdomains(config: Config) -> None:
    """allowed_hosts names and ``*.domain`` patterns answer too; loopback still does."""
    app = create_app(config, allowed_hosts=["kiq.example.com", "*.corp.example"])
    with TestClient(app) as client:
        for host, status in [
            ("kiq.example.com", 200),
            ("kiq.example.com:8080", 200),
            ("ops.corp.example", 200),
            ("corp.example.evil", 400),
            ("example.com", 400),
            ("localhost", 200),
        ]:
            assert client.get("/queues", headers={"Host": host}).status_code == status, host


def test_with_an_auth_hook_any_host_passes_unless_restricted(config: Config) -> None:
    """Credentials are per site, so with auth the default is any host; allowed_hosts
    still restricts it when given."""
    hook = BasicAuth("admin", "s3cret")
    headers = {**basic("admin", "s3cret"), "Host": "kiq.example.com"}
    with TestClient(create_app(config, auth=hook)) as client:
        assert client.get("/queues", headers=headers).status_code == 200
    with TestClient(create_app(config, auth=hook, allowed_hosts=["ops.example"])) as client:
        assert client.get("/queues", headers=headers).status_code == 400


def test_allowed_hosts_star_allows_any_host(config: Config) -> None:
    """``["*"]`` turns the check off (a proxy in front checks Host itself)."""
    with TestClient(create_app(config, allowed_hosts=["*"])) as client:
        assert client.get("/queues", headers={"Host": "anything.example"}).status_code == 200


@pytest.mark.parametrize(
    ("header", "name"),
    [("Example.COM:80", "example.com"), ("[::1]:7433", "::1"), ("[::1]", "::1"), ("h.", "h")],
)
def test_host_name_drops_port_brackets_and_dot(header: str, name: str) -> None:
    assert host_name(header) == name


# -- security headers on every response ----------------------------------------------


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, name


def test_basic_auth_challenge_carries_the_security_headers(config: Config) -> None:
    """The 401 of the basic-auth challenge has the CSP, framing and sniffing headers."""
    with TestClient(create_app(config, auth=BasicAuth("admin", "s3cret"))) as client:
        response = client.get("/")
    assert response.status_code == 401
    assert_security_headers(response)


def test_refusals_carry_the_security_headers(config: Config, web: WebClient) -> None:
    """The auth hook's 403, the Host check's 400 and a CSRF 403 have them too."""
    with TestClient(create_app(config, auth=lambda request: False)) as client:
        assert_security_headers(client.get("/"))
    assert_security_headers(web.get("/", headers={"Host": "attacker.example"}))
    assert_security_headers(web.http.post("/queues/low", data={"action": "delete"}))
