"""Every bad input gets a clear JSON error and the service stays healthy; strangers stay out.

These run against a fake backend (no model), so they are fast and can script failures.
"""

from __future__ import annotations

import io
import logging
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.errors import ClientGone
from app.model.messages import ModelRequest
from scripts.harness import health_until, live_server, local_client, wait_healthy
from tests.fake_model import FakeService, Hold, fake_service
from tests.images import exif_rotated_jpeg, gradient, image_bytes

PNG = image_bytes(gradient(64, 48))


def make_settings(**overrides: Any) -> Settings:
    return Settings(model="fake/model", warmup=False, **overrides)


@pytest.fixture
def fake() -> FakeService:
    return fake_service(make_settings())


def serve(fake: FakeService) -> TestClient:
    # Errors are asserted through their responses (a 500 included), not re-raised in the test.
    return local_client(fake.app(), raise_server_exceptions=False)


@pytest.fixture
def client(fake: FakeService) -> Iterator[TestClient]:
    with serve(fake) as c:
        wait_healthy(c)
        yield c


def post(client: TestClient, data: dict[str, Any] | None = None, files: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
    return client.post("/segment", data={"prompt": "cat", **(data or {})}, files=files, **kw)


def upload(data: bytes, name: str = "image.png") -> dict[str, tuple[str, bytes]]:
    return {"image_file": (name, data)}


def png_declaring(width: int, height: int) -> bytes:
    """A few bytes that claim a huge image: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b""))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def multi_frame(fmt: str) -> bytes:
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


JPEG = image_bytes(gradient(64, 48), "JPEG")
BAD_INPUTS = [
    # (name, form fields, files, status, words the detail must contain)
    ("no prompt", {}, upload(PNG), 422, "prompt is missing"),
    ("empty prompt", {"prompt": ""}, upload(PNG), 422, "prompt is missing"),
    ("whitespace prompt", {"prompt": " \t\n "}, upload(PNG), 400, "prompt is empty"),
    ("prompt over limit", {"prompt": "x" * 513}, upload(PNG), 400, "limit is 512"),
    ("neither image", {"prompt": "cat"}, None, 400, "exactly one of"),
    (
        "both images",
        {"prompt": "cat", "image_url": "https://example.com/a.png"},
        upload(PNG),
        400,
        "exactly one",
    ),
    ("zero bytes", {"prompt": "cat"}, upload(b""), 400, "empty"),
    (
        "text",
        {"prompt": "cat"},
        upload(b"hello world, just text", "a.png"),
        415,
        "not a recognised image",
    ),
    (
        "pdf",
        {"prompt": "cat"},
        upload(b"%PDF-1.7\n1 0 obj <<>> endobj\n", "a.pdf"),
        415,
        "not a recognised",
    ),
    (
        "html",
        {"prompt": "cat"},
        upload(b"<!doctype html><html></html>", "a.jpg"),
        415,
        "not a recognised",
    ),
    ("truncated png", {"prompt": "cat"}, upload(PNG[: len(PNG) // 2]), 400, "corrupt or truncated"),
    (
        "truncated jpeg",
        {"prompt": "cat"},
        upload(JPEG[: len(JPEG) // 2], "a.jpg"),
        400,
        "corrupt or truncated",
    ),
    ("decompression bomb", {"prompt": "cat"}, upload(png_declaring(30000, 30000)), 413, "pixels"),
    (
        "unknown model_id",
        {"prompt": "cat", "model_id": "google/other"},
        upload(PNG),
        400,
        "model_id",
    ),
    ("bad mask_format", {"prompt": "cat", "mask_format": "gif"}, upload(PNG), 422, "mask_format"),
    (
        "bad max_new_tokens",
        {"prompt": "cat", "max_new_tokens": "0"},
        upload(PNG),
        422,
        "max_new_tokens",
    ),
    ("ftp url", {"prompt": "cat", "image_url": "ftp://example.com/a.png"}, None, 400, "http"),
    (
        "credentials in url",
        {"prompt": "cat", "image_url": "http://u:p@example.com/a.png"},
        None,
        400,
        "credentials",
    ),
]


@pytest.mark.parametrize(
    ("name", "form", "files", "status", "says"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_error_and_the_service_stays_up(
    client: TestClient, name: str, form: dict[str, str], files: Any, status: int, says: str
) -> None:
    response = client.post("/segment", data=form, files=files)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and says in detail
    assert client.get("/health").status_code == 200


def test_non_utf8_multipart_field(client: TestClient) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'.encode()
        + b"\x81\x9f\x85 cat\r\n"
        + f'--{boundary}\r\nContent-Disposition: form-data; name="image_file"; '
        f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + PNG
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/segment",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.json()["detail"]


def test_non_utf8_urlencoded_field(client: TestClient) -> None:
    response = client.post(
        "/segment",
        content=b"prompt=%FF%FEcat&image_url=http://x.example/a",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400 and "UTF-8" in response.json()["detail"]


GOOD_IMAGES = [
    ("png named .jpg", PNG, "photo.jpg", (64, 48)),
    ("1x1", image_bytes(gradient(1, 1)), "a.png", (1, 1)),
    ("10000x1", image_bytes(gradient(10000, 1)), "a.png", (10000, 1)),
    ("animated gif", multi_frame("GIF"), "a.gif", (20, 10)),
    ("multi-page tiff", multi_frame("TIFF"), "a.tif", (20, 10)),
    (
        "16-bit png",
        image_bytes(Image.fromarray(np.full((6, 8), 40000, np.uint16))),
        "a.png",
        (8, 6),
    ),
    ("cmyk jpeg", image_bytes(gradient(30, 20, "CMYK"), "JPEG"), "a.jpg", (30, 20)),
    ("palette png", image_bytes(gradient(30, 20, "P")), "a.png", (30, 20)),
    ("LA png", image_bytes(gradient(30, 20, "LA")), "a.png", (30, 20)),
    ("exif rotated", exif_rotated_jpeg(40, 30, orientation=8), "a.jpg", (30, 40)),
]


@pytest.mark.parametrize(
    ("name", "data", "filename", "size"), GOOD_IMAGES, ids=[g[0] for g in GOOD_IMAGES]
)
def test_awkward_but_valid_images_are_converted(
    client: TestClient,
    fake: FakeService,
    name: str,
    data: bytes,
    filename: str,
    size: tuple[int, int],
) -> None:
    response = post(client, files=upload(data, filename))
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == size
    image = fake.model.images[-1]
    assert image.mode == "RGB" and image.size == (224, 224)  # the model's input, while it waits


def test_first_frame_is_the_one_segmented(client: TestClient, fake: FakeService) -> None:
    response = post(client, files=upload(multi_frame("GIF"), "a.gif"))
    assert response.status_code == 200, response.text
    r, _, b = fake.model.images[-1].getpixel((5, 5))
    assert r > 200 and b < 50


def test_unknown_form_fields_are_ignored(client: TestClient) -> None:
    response = post(client, {"colour": "blue", "threshold": "0.3"}, upload(PNG))
    assert response.status_code == 200


# -- size limits while streaming -------------------------------------------------------------
@pytest.fixture
def small_limit_client() -> Iterator[tuple[TestClient, FakeService]]:
    fake = fake_service(make_settings(max_upload_bytes=10_000))
    with serve(fake) as c:
        wait_healthy(c)
        yield c, fake


def test_upload_over_the_limit(small_limit_client: tuple[TestClient, FakeService]) -> None:
    client, fake = small_limit_client
    big = image_bytes(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    )
    assert len(big) > 80_000
    response = post(client, files=upload(big))
    assert response.status_code == 413 and "10,000" in response.json()["detail"]
    assert fake.model.images == []


def test_streamed_body_is_refused_before_it_is_all_sent() -> None:
    """Chunked upload (no Content-Length) over a real socket: the client sends 20x the limit and
    then waits; the 413 must already have come while the rest was never sent."""
    fake = fake_service(make_settings(max_upload_bytes=10_000))
    head = (
        b"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="image_file"; filename="a.png"\r\n\r\n'
    chunks = [part] + [b"\0" * 10_000] * 20

    with live_server(fake.app()) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks))
            # The body is never terminated: the server must answer anyway, then hang up.
            reply = conn.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert "content-type: application/json" in reply and "connection: close" in reply
    assert fake.model.images == []


def test_declared_content_length_over_the_limit(
    small_limit_client: tuple[TestClient, FakeService],
) -> None:
    client, _ = small_limit_client
    response = client.post(
        "/segment",
        content=b"x" * 200_000,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413 and "SEGMENT_MAX_UPLOAD_BYTES" in response.json()["detail"]


# -- who may call ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "127.0.0.2"]
)
def test_loopback_hosts_are_accepted(client: TestClient, host: str) -> None:
    assert client.get("/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "192.168.1.10:8000", "localhost.evil.example"]
)
def test_foreign_host_headers_are_refused(client: TestClient, host: str) -> None:
    response = post(client, files=upload(PNG), headers={"Host": host})
    assert response.status_code == 403 and "SEGMENT_ALLOWED_HOSTS" in response.json()["detail"]
    assert client.get("/health", headers={"Host": host}).status_code == 403


def test_configured_hosts_are_accepted() -> None:
    fake = fake_service(make_settings(allowed_hosts=["mac-studio.local"]))
    with serve(fake) as client:
        assert client.get("/health", headers={"Host": "mac-studio.local:8000"}).status_code == 200


def test_cross_site_posts_are_refused(client: TestClient) -> None:
    response = post(client, files=upload(PNG), headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and "SEGMENT_ALLOWED_ORIGINS" in response.json()["detail"]
    null_origin = post(client, files=upload(PNG), headers={"Origin": "null"})
    assert null_origin.status_code == 403
    health = client.get("/health", headers={"Origin": "https://evil.example"})
    assert health.status_code == 200, health.text  # an error answer lacks the header too
    assert "access-control-allow-origin" not in health.headers


def test_same_origin_and_configured_origins_are_allowed() -> None:
    fake = fake_service(make_settings(allowed_origins=["https://app.example"]))
    with serve(fake) as client:
        wait_healthy(client)
        same = post(client, files=upload(PNG), headers={"Origin": "http://127.0.0.1:8000"})
        assert same.status_code == 200
        allowed = post(client, files=upload(PNG), headers={"Origin": "https://app.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        preflight = client.options(
            "/segment",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200


def test_bearer_token() -> None:
    fake = fake_service(make_settings(api_token="s3cret-token"))
    with serve(fake) as client:
        assert client.get("/health").status_code == 200  # open for monitoring
        missing = post(client, files=upload(PNG))
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = post(client, files=upload(PNG), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "SEGMENT_API_TOKEN" in wrong.json()["detail"]
        ok = post(client, files=upload(PNG), headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        assert client.get("/openapi.json").status_code == 401


def test_warning_when_exposed_without_a_token(caplog: pytest.LogCaptureFixture) -> None:
    fake = fake_service(make_settings(host="0.0.0.0"))
    with caplog.at_level(logging.WARNING), serve(fake):
        pass
    assert "without SEGMENT_API_TOKEN" in caplog.text


# -- load and faults ---------------------------------------------------------------------------
def test_full_queue_answers_503_with_retry_after() -> None:
    fake = fake_service(make_settings(max_queue=1, max_batch=1))  # one decodes, one may wait
    holds = [Hold(), Hold()]
    fake.model.enqueue(*holds)
    with serve(fake) as client, ThreadPoolExecutor(4) as pool:
        wait_healthy(client)
        try:  # released whatever happens: a failed check must not leave the pool waiting
            running = pool.submit(post, client, files=upload(PNG))
            assert holds[0].started.wait(10)
            waiting = pool.submit(post, client, files=upload(PNG))
            health_until(client, lambda h: h["waiting"] >= 1, "the second request never queued")
            health = client.get("/health").json()
            assert (health["waiting"], health["running"]) == (1, 1)
            rejected = post(client, files=upload(PNG))
            assert rejected.status_code == 503 and rejected.headers["retry-after"]
            assert "1 requests are already waiting" in rejected.json()["detail"]
        finally:
            for hold in holds:
                hold.release.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_timeout_answers_504_and_does_not_wedge_the_worker() -> None:
    fake = fake_service(make_settings(request_timeout_s=0.3))
    hold = Hold()
    fake.model.enqueue(hold)
    with serve(fake) as client:
        wait_healthy(client)
        response = post(client, files=upload(PNG))
        assert (
            response.status_code == 504 and "SEGMENT_REQUEST_TIMEOUT_S" in response.json()["detail"]
        )
        assert hold.cancelled.wait(5)  # the generation was told to stop
        assert post(client, files=upload(PNG)).status_code == 200


def test_a_failure_inside_the_model_is_a_500_with_a_request_id_and_the_next_request_works(
    client: TestClient, fake: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    fake.model.enqueue(RuntimeError("decoder exploded"))
    with caplog.at_level(logging.ERROR):
        response = post(client, files=upload(PNG))
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert request_id in response.json()["detail"]
    assert "decoder exploded" not in response.json()["detail"]  # nothing internal leaks
    assert request_id in caplog.text and "Traceback" in caplog.text
    assert post(client, files=upload(PNG)).status_code == 200


def test_a_departed_client_stops_its_generation(fake: FakeService) -> None:
    """The client leaving (the server receives its disconnect) cancels the request: the job on
    the worker stops, the counts go back to zero, and the worker takes the next one."""
    import asyncio

    from app.api.routes import unless_client_leaves

    hold = Hold()
    fake.model.enqueue(hold)
    request = ModelRequest(Image.new("RGB", (4, 4)), "x", 4, fake.model.name)

    class GoneRequest:
        async def receive(self) -> dict[str, str]:
            await asyncio.to_thread(hold.started.wait, 5)
            return {"type": "http.disconnect"}

    async def answer() -> list[object]:
        async with fake.worker.submit(request) as events:
            return [event async for event in events]

    async def scenario() -> None:
        await fake.worker.wait_ready()
        with pytest.raises(ClientGone, match="closed the connection"):
            await unless_client_leaves(GoneRequest(), answer())  # type: ignore[arg-type]
        assert await asyncio.to_thread(hold.cancelled.wait, 5)
        for _ in range(500):  # the job leaves the thread right after it sees the cancel
            if fake.worker.status().running == 0:
                break
            await asyncio.sleep(0.01)
        status = fake.worker.status()
        assert (status.waiting, status.running) == (0, 0)
        assert len(await answer()) == 1  # the worker is free again: the next one is answered
        await fake.worker.close()

    asyncio.run(scenario())


def test_service_survives_concurrent_mixed_requests(client: TestClient) -> None:
    def one(i: int) -> int:
        files = upload(PNG if i % 2 else b"not an image")
        return post(client, files=files).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(40)))
    assert sorted(set(codes)) == [200, 415]
    assert threading.active_count() < 50


def test_a_burst_of_twenty_from_one_app_queues_instead_of_failing() -> None:
    fake = fake_service(make_settings(max_batch=1))  # the default queue behind a busy model
    hold = Hold()
    fake.model.enqueue(hold)
    with serve(fake) as client, ThreadPoolExecutor(21) as pool:
        wait_healthy(client)
        try:  # released whatever happens: a failed check must not leave the pool waiting
            first = pool.submit(post, client, files=upload(PNG))
            assert hold.started.wait(10)
            burst = [pool.submit(post, client, files=upload(PNG)) for _ in range(20)]
            health_until(client, lambda h: h["waiting"] >= 20, "the burst never all queued")
        finally:
            hold.release.set()
        codes = [f.result().status_code for f in [first, *burst]]
    assert codes == [200] * 21
