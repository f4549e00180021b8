"""SEGMENT_DEVICE: the GPU when MLX has one, the CPU otherwise; OpenBLAS only for the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.model.dtype_policy import choose_float32
from app.runtime.blas import preload_environment
from app.runtime.device import NoGpu, choose_device, gpu_backend, use_device
from app.runtime.worker import Worker
from scripts.harness import local_client, tiny_settings, wait_healthy

LIB = Path("/opt/lib/libopenblas.so")
GB = 1024**3


@pytest.mark.parametrize(
    ("policy", "gpu", "chosen"),
    [("auto", True, "gpu"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("gpu", True, "gpu")],
)
def test_choice(policy: str, gpu: bool, chosen: str) -> None:
    assert choose_device(policy, gpu, "linux") == chosen  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("platform", "says"), [("linux", "make install BACKEND=cuda13"), ("darwin", "no Metal GPU")]
)
def test_asking_for_a_gpu_that_is_not_there_says_how_to_get_one(platform: str, says: str) -> None:
    with pytest.raises(NoGpu, match=says):
        choose_device("gpu", False, platform)


def test_the_gpu_keeps_the_checkpoint_dtype_whichever_it_is() -> None:
    assert not choose_float32("auto", "gpu", 1 * GB, 64 * GB)  # Metal and CUDA alike
    assert choose_float32("auto", "cpu", 1 * GB, 64 * GB)


@pytest.mark.parametrize(
    ("device", "backend", "preloads"),
    [
        ("auto", None, True),  # CPU-only MLX: OpenBLAS helps
        ("auto", "cuda", False),  # the model will run on the GPU
        ("gpu", None, False),
        ("cpu", "cuda", True),  # asked for the CPU on a CUDA machine
    ],
)
def test_openblas_only_for_the_cpu_backend(
    device: str, backend: str | None, preloads: bool
) -> None:
    env = preload_environment({}, "linux", LIB, "auto", device, backend)  # type: ignore[arg-type]
    assert (env is not None) == preloads


@pytest.mark.skipif(sys.platform != "linux", reason="this machine's MLX build is CPU-only")
def test_this_machine_runs_on_the_cpu() -> None:
    assert gpu_backend() is None
    assert use_device("auto", sys.platform) == "cpu"
    with pytest.raises(NoGpu):
        use_device("gpu", sys.platform)


@pytest.mark.skipif(sys.platform != "linux", reason="this machine's MLX build is CPU-only")
def test_a_missing_gpu_is_a_clear_health_reason_without_a_traceback(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from app.api.app import create_app
    from app.runtime.pool import RunnerPool

    settings = tiny_settings(tiny_model_dir, device="gpu", warmup=False)
    worker = Worker(RunnerPool(settings), max_queue=1, request_timeout_s=10)
    with local_client(create_app(settings, worker)) as client:
        with pytest.raises(AssertionError):
            wait_healthy(client, timeout_s=30)
        health = client.get("/health").json()
    assert health["status"] == "error" and "BACKEND=cuda13" in health["reason"]
    assert "Traceback" not in caplog.text


def test_the_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="device"):
        Settings(device="tpu")  # type: ignore[arg-type,call-arg]
