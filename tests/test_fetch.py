"""image_url: fetched within limits, and never from the user's own network unless allowlisted."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.steps.fetch import UrlPolicy
from scripts.harness import local_client, wait_healthy
from tests.fake_model import fake_service
from tests.images import gradient, image_bytes

PNG = image_bytes(gradient(32, 24))
seen_hosts: list[str] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        seen_hosts.append(self.headers.get("Host", ""))
        route = self.path.split("?")[0]
        if route == "/a.png":
            self._send(PNG)
        elif route == "/big":
            self._send(b"\0" * 50_000)
        elif route == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"3e8\r\n" + b"\0" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif route == "/slow":
            time.sleep(2)
            self._send(PNG)
        elif route == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.05)
        elif route == "/loop":
            self._redirect(self.path)
        elif route == "/to-other-loopback":
            self._redirect(f"http://127.0.0.2:{self.server.server_address[1]}/a.png")
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def client_with(**settings: Any) -> TestClient:
    fake = fake_service(Settings(model="fake/model", warmup=False, **settings))
    return local_client(fake.app(), raise_server_exceptions=False)


def fetch(client: TestClient, url: str):  # type: ignore[no-untyped-def]
    return client.post("/segment", data={"prompt": "cat", "image_url": url})


def test_loopback_is_refused_by_default(origin: str) -> None:
    with client_with() as client:
        wait_healthy(client)
        response = fetch(client, f"http://{origin}/a.png")
    assert response.status_code == 403
    assert "SEGMENT_URL_ALLOWLIST" in response.json()["detail"]


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "localhost"])
def test_allowlist_by_ip_cidr_or_name(origin: str, entry: str) -> None:
    port = origin.rsplit(":", 1)[1]
    host = "localhost" if entry == "localhost" else "127.0.0.1"
    with client_with(url_allowlist=[entry]) as client:
        wait_healthy(client)
        response = fetch(client, f"http://{host}:{port}/a.png")
    assert response.status_code == 200, response.text
    assert response.json()["width"] == 32
    assert seen_hosts[-1] == f"{host}:{port}"  # connected by address, Host header kept


def test_every_redirect_is_rechecked(origin: str) -> None:
    with client_with(url_allowlist=["127.0.0.1"]) as client:
        wait_healthy(client)
        response = fetch(client, f"http://{origin}/to-other-loopback")
    assert response.status_code == 403 and "127.0.0.2" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "settings", "status", "says"),
    [
        ("/loop", {}, 400, "more than 3"),
        ("/big", {"max_upload_bytes": 10_000}, 413, "10,000"),
        ("/big-chunked", {"max_upload_bytes": 10_000}, 413, "10,000"),
        ("/slow", {"url_timeout_s": 0.3}, 504, "0.3 s"),
        ("/drip", {"url_total_timeout_s": 0.5}, 504, "SEGMENT_URL_TOTAL_TIMEOUT_S"),
        ("/missing", {}, 400, "HTTP 404"),
    ],
)
def test_fetch_limits(
    origin: str, path: str, settings: dict[str, Any], status: int, says: str
) -> None:
    with client_with(url_allowlist=["127.0.0.1"], **settings) as client:
        wait_healthy(client)
        started = time.monotonic()
        response = fetch(client, f"http://{origin}{path}")
        assert time.monotonic() - started < 5
        assert response.status_code == status, response.text
        assert says in response.json()["detail"]
        assert client.get("/health").status_code == 200


def test_unresolvable_host() -> None:
    with client_with() as client:
        wait_healthy(client)
        response = fetch(client, "http://no-such-host.invalid/a.png")
    assert response.status_code == 400 and "does not resolve" in response.json()["detail"]


@pytest.mark.parametrize(
    ("address", "permitted"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("ff02::1", False),
    ],
)
def test_policy_refuses_local_networks(address: str, permitted: bool) -> None:
    assert UrlPolicy([]).permits("example.com", ipaddress.ip_address(address)) is permitted


def test_policy_allowlist() -> None:
    policy = UrlPolicy(["nas.local", "10.0.0.0/24", "192.168.1.5"])
    assert policy.permits("nas.local", ipaddress.ip_address("192.168.1.20"))
    assert policy.permits("x", ipaddress.ip_address("10.0.0.99"))
    assert policy.permits("x", ipaddress.ip_address("192.168.1.5"))
    assert not policy.permits("x", ipaddress.ip_address("10.0.1.1"))
