"""Where the `segment` command's images go: a model in this process, or a running service."""

from __future__ import annotations

import base64
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from types import TracebackType
from typing import Any

import httpx

from app.config import Settings
from app.errors import NotReady, ServiceError
from app.model.demo import DEMO_WARNING
from app.pipeline import SegmentResult
from app.request import SegmentRequest
from app.segmenter import Segmenter
from app.steps.masks import decode_coco_rle, encode_mask
from app.steps.objects import SegmentedObject

SERVICE_TIMEOUT_S = 600.0  # one image, queue included; the service has its own limit
READY_WAIT_S = 120.0  # a service that is still loading gets this long

log = logging.getLogger(__name__)


class LocalModel:
    """The model loaded once in this process, for every image of the command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.segmenter: Segmenter | None = None

    def __enter__(self) -> LocalModel:
        self.segmenter = Segmenter.load(self.settings)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.segmenter is not None:
            self.segmenter.close()

    def submit(self, request: SegmentRequest) -> Future[SegmentResult]:
        """Start the request; those in flight together share the model's batch."""
        assert self.segmenter is not None
        return self.segmenter.submit(request)


class RemoteService:
    """A running service: masks travel as COCO RLE (exact, compact) and are re-encoded here
    in the asked format, so the files written are the same as with a local model."""

    def __init__(self, url: str, token: str | None, in_flight: int) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=SERVICE_TIMEOUT_S, trust_env=False)
        # One connection per request in flight: the service batches concurrent requests.
        self.senders = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="send")

    def __enter__(self) -> RemoteService:
        self._wait_ready()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.senders.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WAIT_S
        while True:
            try:
                health = self.client.get(f"{self.url}/health", timeout=10)
            except httpx.HTTPError as exc:
                raise NotReady(
                    f"Cannot reach the service at {self.url} ({exc.__class__.__name__}); is it "
                    "running (`make serve`)?"
                ) from exc
            body = (
                health.json()
                if health.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            if health.status_code == 200:
                if body.get("random_weights"):  # as loud as the same model run locally
                    log.warning(DEMO_WARNING, f"{body.get('model')} (at {self.url})")
                return
            if body.get("status") != "loading" or time.monotonic() > deadline:
                raise NotReady(f"The service at {self.url} cannot serve: {body.get('reason')}")
            time.sleep(1)

    def submit(self, request: SegmentRequest) -> Future[SegmentResult]:
        return self.senders.submit(self._send, request)

    def _send(self, request: SegmentRequest) -> SegmentResult:
        assert isinstance(request.image, bytes), "the command sends files as they are"
        # Masks travel as compressed COCO RLE (exact, compact); re-encoded here as asked.
        wire = request.model_copy(
            update={"mask_format": "none" if request.mask_format == "none" else "coco_rle"}
        )
        try:
            response = self.client.post(
                f"{self.url}/segment",
                data=wire.wire_fields(),
                files={"image_file": ("image", request.image)},
            )
        except httpx.HTTPError as exc:
            raise ServiceError(f"the request failed: {exc.__class__.__name__}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:  # not our service, or a proxy in between
            body = {"detail": response.text[:200] or "no body"}
        if response.status_code != 200:
            detail = body.get("detail", body)
            raise ServiceError(f"the service answered {response.status_code}: {detail}")
        return _result(body, request)


def _result(body: dict[str, Any], request: SegmentRequest) -> SegmentResult:
    """The service's JSON back into a pipeline result, masks decoded and re-encoded as asked."""
    objects = []
    for wire in body["objects"]:
        mask = decode_coco_rle(wire["mask"]) if wire["mask"] is not None else None
        obj = SegmentedObject(
            label=wire["label"],
            box=tuple(wire["box"]),
            mask=mask,
            score=wire["score"],
            area=wire["area"],
        )
        if mask is not None and request.mask_format != "none":
            obj = replace(obj, encoded_mask=encode_mask(mask, request.mask_format))
        objects.append(obj)
    overlay = body.get("overlay")
    return SegmentResult(
        model=body["model"],
        prompt=body["prompt"],
        width=body["width"],
        height=body["height"],
        text=body["text"],
        objects=objects,
        overlay_png=base64.b64decode(overlay) if overlay else None,
        timings_ms=body["timings_ms"],
        tokens=body.get("tokens", {}),  # a service older than the field sends none
    )
