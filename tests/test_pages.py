"""Security headers, without a browser: every page carries a same-origin Content-Security-Policy,
every response `X-Content-Type-Options: nosniff` (tests/test_browser.py runs the pages under it).
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from app.api.docs import ASSETS, ASSETS_URL, REDOC_CONTENT_SECURITY_POLICY, install_docs
from app.api.headers import (
    CONTENT_SECURITY_POLICY,
    REFERRER_POLICY,
    ResponseHeaders,
    install_headers,
)
from app.api.playground import STATIC, install_playground
from app.config import Settings
from scripts.harness import local_client, wait_healthy
from tests.fake_model import fake_service

HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # as a browser asks
STATIC_ASSETS = sorted(
    [f"/static/{p.name}" for p in STATIC.iterdir() if p.is_file()]
    + [f"{ASSETS_URL}/{p.name}" for p in ASSETS.iterdir() if p.is_file()]
    + [f"{ASSETS_URL}/swagger-init.js", "/favicon.ico"]
)
# /favicon.ico is the PNG under another name.
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".ico": "image/png",
}


@pytest.fixture(scope="module")
def pages() -> Iterator[TestClient]:
    """The pages and the headers middleware on a bare app, with one JSON route."""
    app = FastAPI(title="Pages", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    install_docs(app)
    install_playground(app)
    install_headers(app)
    with local_client(app) as client:
        yield client


@pytest.fixture(scope="module")
def service() -> Iterator[TestClient]:
    """The real app (a fake backend behind it)."""
    fake = fake_service(Settings(model="fake/model", warmup=False))
    with local_client(fake.app(), raise_server_exceptions=False) as client:
        wait_healthy(client)
        yield client


def directives(policy: str) -> dict[str, str]:
    """`"a x; b y z"` -> {"a": "x", "b": "y z"}."""
    pairs = (d.strip().partition(" ") for d in policy.split(";") if d.strip())
    return {name: value for name, _, value in pairs}


class Scripts(HTMLParser):
    """Every <script> element's attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.found.append(dict(attrs))


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/docs"])
def test_every_page_carries_the_same_origin_policy(pages: TestClient, path: str) -> None:
    response = pages.get(path, headers=HTML)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == REFERRER_POLICY


def test_the_policy_allows_this_service_and_nothing_else() -> None:
    policy = directives(CONTENT_SECURITY_POLICY)
    for name in ("default-src", "script-src", "style-src", "connect-src", "form-action"):
        assert policy[name] == "'self'", name
    assert policy["img-src"] == "'self' data: blob:"  # the playground's upload and overlay
    assert (policy["object-src"], policy["base-uri"], policy["frame-ancestors"]) == (
        "'none'",
        "'none'",
        "'none'",
    )


def test_redoc_keeps_its_own_policy(pages: TestClient) -> None:
    """The middleware leaves a route's own policy alone; ReDoc's differs in two directives."""
    response = pages.get("/redoc", headers=HTML)
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == REDOC_CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    base, redoc = directives(CONTENT_SECURITY_POLICY), directives(REDOC_CONTENT_SECURITY_POLICY)
    changed = {name for name in base.keys() | redoc.keys() if base.get(name) != redoc.get(name)}
    assert changed == {"style-src", "worker-src"}
    assert redoc["style-src"] == "'self' 'unsafe-inline'"
    assert redoc["worker-src"] == "'self' blob:"
    assert redoc["script-src"] == "'self'"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_have_no_inline_script(pages: TestClient, path: str) -> None:
    """`script-src 'self'` blocks inline scripts: each one must come from a file here."""
    response = pages.get(path, headers=HTML)
    assert response.status_code == 200
    parser = Scripts()
    parser.feed(response.text)
    assert parser.found, "no script at all: the page cannot start"
    for script in parser.found:
        assert (script.get("src") or "").startswith(f"{ASSETS_URL}/"), script
        assert pages.get(script["src"] or "").status_code == 200, script


@pytest.mark.parametrize("path", STATIC_ASSETS)
def test_every_static_file_is_nosniff_with_its_true_type(pages: TestClient, path: str) -> None:
    """With nosniff a browser runs a script only if it is labelled as one."""
    response = pages.get(path)
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    content_type = response.headers["content-type"]
    suffix = Path(path).suffix
    assert content_type.startswith(CONTENT_TYPES.get(suffix, "text/html")), content_type


@pytest.mark.parametrize(("path", "status"), [("/health", 200), ("/nowhere", 404)])
def test_json_answers_are_nosniff(pages: TestClient, path: str, status: int) -> None:
    response = pages.get(path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in response.headers  # pages only


def test_the_welcome_for_scripts_is_json_not_the_page(pages: TestClient) -> None:
    response = pages.get("/", headers={"accept": "*/*"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_response_without_headers_still_gets_them() -> None:
    """Headers are optional in an ASGI response start; the middleware adds the list."""

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    response = TestClient(ResponseHeaders(bare)).get("/")  # no `with`: `bare` has no lifespan
    assert response.status_code == 204
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/docs"])
def test_the_service_pages_carry_the_policy(service: TestClient, path: str) -> None:
    response = service.get(path, headers=HTML)
    assert response.status_code == 200
    assert response.headers.get("content-security-policy") == CONTENT_SECURITY_POLICY


def test_the_service_redoc_carries_its_policy(service: TestClient) -> None:
    response = service.get("/redoc", headers=HTML)
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == REDOC_CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/health", {}, 200),
        ("/static/playground.js", {}, 200),
        ("/static-docs/swagger-ui-bundle.js", {}, 200),
        ("/openapi.json", {}, 200),
        ("/health", {"host": "evil.example"}, 403),  # the guard's own refusal
    ],
)
def test_the_service_answers_are_nosniff(
    service: TestClient, path: str, headers: dict[str, str], status: int
) -> None:
    response = service.get(path, headers=headers)
    assert response.status_code == status
    assert response.headers.get("x-content-type-options") == "nosniff"
