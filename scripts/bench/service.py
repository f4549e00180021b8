"""Stages that time whole requests through the real app and worker on the tiny model, made to
answer three objects (scripts.scripted_output): where a request's time goes, the overlay, a
second prompt on the same image, and streaming over a real socket.

Every stage serves through scripts.harness (in-process TestClient, or uvicorn on loopback) and
waits for /health with its deadline. The first request of each kind warms caches and is not
counted.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from scripts.bench.common import photo_jpeg, summary
from scripts.harness import live_server, local_client, scripted_app, wait_healthy
from scripts.scripted_output import three_objects

PROMPT = "cat ; dog ; left wheel"  # three_objects() says these three
OVERHEAD_SIZES = ((640, 480), (4000, 3000))
OVERLAY_SIZE = (4000, 3000)
OVERLAY_NOISE, OVERLAY_QUALITY = 25.0, 92  # fine texture: what a reduced-scale decode blurs


@contextmanager
def scripted_client(model_dir: Path) -> Iterator[TestClient]:
    """The tiny service in-process (lifespan run, healthy), saying three_objects()."""
    app, _ = scripted_app(model_dir, three_objects())
    with local_client(app) as client:
        wait_healthy(client)
        yield client


def post(client: TestClient, photo: bytes, form: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """(wall ms, body) of one /segment request; anything but a 200 stops the stage."""
    started = time.perf_counter()
    response = client.post("/segment", data=form, files={"image_file": ("photo.jpg", photo)})
    wall = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    return wall, response.json()


def request_overhead(model_dir: Path, repeats: int) -> list[dict[str, Any]]:
    """Where the time of one plain 3-object request goes, at 640x480 and at 12 MP."""
    rows = []
    with scripted_client(model_dir) as client:
        for width, height in OVERHEAD_SIZES:
            photo = photo_jpeg(width, height)
            stages: dict[str, list[float]] = {}
            walls: list[float] = []
            for index in range(repeats + 1):
                wall, body = post(client, photo, {"prompt": PROMPT})
                assert len(body["objects"]) == 3, body
                if index == 0:
                    continue
                walls.append(wall)
                for stage, ms in body["timings_ms"].items():
                    stages.setdefault(stage, []).append(ms)
            model_ms = [v + g for v, g in zip(stages["vision"], stages["generate"], strict=True)]
            outside = [w - m for w, m in zip(walls, model_ms, strict=True)]
            rows.append(
                {
                    "image": f"{width}x{height}",
                    "upload_bytes": len(photo),
                    "http_wall_ms": summary(walls),
                    "stages_ms": {k: summary(v) for k, v in stages.items()},
                    "all_but_model_ms": summary(outside),
                }
            )
    return rows


def overlay(model_dir: Path, repeats: int) -> dict[str, Any]:
    """overlay=true on a 12 MP photo-like JPEG with three objects (mask_format=none, so the
    picture is the only extra work): its time, and how sharp it is away from the objects."""
    width, height = OVERLAY_SIZE
    photo = photo_jpeg(width, height, noise=OVERLAY_NOISE, quality=OVERLAY_QUALITY)
    form = {"prompt": PROMPT, "overlay": "true", "mask_format": "none"}
    walls: list[float] = []
    stages: dict[str, list[float]] = {"overlay": [], "total": []}
    with scripted_client(model_dir) as client:
        for index in range(repeats + 1):
            wall, body = post(client, photo, form)
            assert len(body["objects"]) == 3 and body.get("overlay"), sorted(body)
            if index:
                walls.append(wall)
                for stage, samples in stages.items():
                    samples.append(body["timings_ms"][stage])
    return {
        "image": f"{width}x{height}",
        "upload_bytes": len(photo),
        "photo": f"gradient + noise (sd {OVERLAY_NOISE:g}), JPEG quality {OVERLAY_QUALITY}",
        "objects": len(body["objects"]),
        "overlay_ms": summary(stages["overlay"]),
        "total_ms": summary(stages["total"]),
        "http_wall_ms": summary(walls),
        "away_from_objects": difference_away_from_objects(photo, body),
    }


def difference_away_from_objects(photo: bytes, body: dict[str, Any]) -> dict[str, float]:
    """Mean |overlay - full-resolution decode of the photo| in grey levels, over the pixels away
    from every object: 0 when the picture is drawn on the image as sent, ~10+ when drawn on a
    reduced-scale decode scaled back up (the fine texture is lost)."""
    full = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"), np.int16)  # (H, W, 3)
    drawn = Image.open(io.BytesIO(base64.b64decode(body["overlay"]))).convert("RGB")
    picture = np.asarray(drawn, np.int16)  # (H, W, 3)
    assert picture.shape == full.shape, (picture.shape, full.shape)
    height, width = full.shape[:2]
    short = min(height, width)
    # Bounds with room to spare for what is drawn: box lines and outlines inside the box; each
    # tag (at 12 MP ~130 px tall, <= 690 px wide here) above the box's top-left corner, or
    # pushed down below an earlier one. What is left is ~25% of the picture here.
    margin, tag_height, tag_width = short // 100, short // 15, short // 3
    away = np.ones((height, width), bool)
    for obj in body["objects"]:
        x0, y0, x1, y1 = obj["box"]
        top, left = max(y0 - tag_height - margin, 0), max(x0 - margin, 0)
        away[top : y1 + tag_height + margin, left : max(x1, x0 + tag_width) + margin] = False
    difference = np.abs(picture - full).mean(axis=-1)  # (H, W) grey levels
    return {
        "mean_abs_diff": round(float(difference[away].mean()), 3),
        "max_abs_diff": round(float(difference[away].max()), 3),
        "fraction_of_pixels_compared": round(float(away.mean()), 3),
    }


def repeated_image(model_dir: Path, repeats: int) -> dict[str, Any]:
    """A second prompt on the same image: the vision tower's output comes from the cache."""
    first: list[dict[str, float]] = []
    second: list[dict[str, float]] = []
    with scripted_client(model_dir) as client:
        for index in range(repeats):
            photo = photo_jpeg(640, 480 + index + 1)  # a new image each round: a cache miss
            for timings in (first, second):
                _, body = post(client, photo, {"prompt": "cat"})
                timings.append(body["timings_ms"])
    return {
        "first_prompt_vision_ms": summary([t["vision"] for t in first]),
        "second_prompt_vision_ms": summary([t["vision"] for t in second]),
        "first_prompt_total_ms": summary([t["total"] for t in first]),
        "second_prompt_total_ms": summary([t["total"] for t in second]),
    }


def streaming(model_dir: Path, repeats: int) -> dict[str, Any]:
    """stream=true over a real socket (uvicorn on loopback): when the first object line arrives
    versus the `done` line, for the 3-object answer at 640x480."""
    app, _ = scripted_app(model_dir, three_objects())
    photo = photo_jpeg(640, 480)
    first: list[float] = []
    done: list[float] = []
    with live_server(app) as url:
        wait_healthy(url)
        for index in range(repeats + 1):
            started = time.perf_counter()
            arrivals: list[tuple[float, dict[str, Any]]] = []
            with httpx.stream(
                "POST",
                f"{url}/segment",
                data={"prompt": PROMPT, "stream": "true"},
                files={"image_file": ("photo.jpg", photo)},
                timeout=120,
            ) as response:
                assert response.status_code == 200, response.read()
                for line in response.iter_lines():
                    if line:
                        arrivals.append(((time.perf_counter() - started) * 1000, json.loads(line)))
            kinds = [body["type"] for _, body in arrivals]
            assert kinds == ["object", "object", "object", "done"], kinds
            if index:
                first.append(arrivals[0][0])
                done.append(arrivals[-1][0])
    return {"first_object_ms": summary(first), "done_ms": summary(done)}
