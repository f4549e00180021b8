"""Several installed checkpoints: GET /models, model_id picks one, loaded on demand."""

from __future__ import annotations

import ctypes
import json
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.app import create_app
from app.config import Settings
from app.model.messages import ModelOutput, ModelRequest
from app.model.tiny import build_tiny_model
from app.runtime.pool import RunnerPool
from scripts.harness import local_client, wait_healthy
from tests.images import gradient, image_bytes

PNG = image_bytes(gradient(64, 48))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tiny_model(root / "local" / "tiny-a", seed=0)
    build_tiny_model(root / "local" / "tiny-b", seed=1)
    broken = root / "local" / "broken"  # a download cut short: config, no weights
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    return root


def serve(models_dir: Path, **overrides: Any) -> TestClient:
    settings = Settings(  # type: ignore[call-arg]
        model="local/tiny-a",
        models_dir=models_dir,
        vae_path=models_dir / "local" / "tiny-a" / "vae-oid.npz",
        **overrides,
    )
    return local_client(create_app(settings))


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    with serve(models_dir) as c:
        wait_healthy(c)
        yield c


def segment(client: TestClient, **form: str) -> Any:
    return client.post(
        "/segment", data={"prompt": "cat", **form}, files={"image_file": ("a.png", PNG)}
    )


def listed(client: TestClient) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in client.get("/models").json()["models"]}


def test_models_lists_what_is_installed(client: TestClient) -> None:
    models = listed(client)
    assert list(models) == ["local/tiny-a", "local/broken", "local/tiny-b"]
    a = models["local/tiny-a"]
    assert a["default"] and a["loaded"] and a["input_size"] == 224 and a["bytes"] > 100_000
    assert a["random_weights"] and a["quantization"] is None
    assert not models["local/tiny-b"]["loaded"]


def test_model_id_swaps_models_in_on_demand(client: TestClient) -> None:
    b = segment(client, model_id="local/tiny-b")
    assert b.status_code == 200, b.text
    assert b.json()["model"] == "local/tiny-b" and b.json()["timings_ms"]["load"] > 0
    models = listed(client)
    assert models["local/tiny-b"]["loaded"] and not models["local/tiny-a"]["loaded"]  # 1 at once
    assert "load" not in segment(client, model_id="local/tiny-b").json()["timings_ms"]
    back = segment(client)  # no model_id: the default, loaded again
    assert back.json()["model"] == "local/tiny-a" and "load" in back.json()["timings_ms"]
    assert client.get("/health").json()["status"] == "ok"


def test_an_unknown_or_broken_model_is_an_error_for_that_request_only(client: TestClient) -> None:
    unknown = segment(client, model_id="someone/else")
    assert unknown.status_code == 400
    assert "installed: local/tiny-a, local/broken, local/tiny-b" in unknown.json()["detail"]
    assert segment(client).status_code == 200  # the default is resident
    broken = segment(client, model_id="local/broken")
    assert broken.status_code == 503 and "not (completely) installed" in broken.json()["detail"]
    after = segment(client)
    assert after.status_code == 200 and "load" not in after.json()["timings_ms"]  # kept


@pytest.mark.parametrize(
    ("model_id", "says", "never"),
    [
        ("string", "is not a Hub id (owner/name)", "make models"),
        ("someone/else", "`make models SEGMENT_MODEL=someone/else` installs it", None),
        (
            "google/paligemma2-10b-mix-448",
            "SEGMENT_MODEL=mlx-community/paligemma2-10b-mix-448-8bit` installs its MLX conversion",
            None,
        ),
    ],
)
def test_an_unknown_model_id_is_offered_for_install_only_if_it_could_be_one(
    client: TestClient, model_id: str, says: str, never: str | None
) -> None:
    """Swagger's old placeholder `string` is no Hub id: nothing to install, nothing offered."""
    answer = segment(client, model_id=model_id)
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert says in detail and "installed: local/tiny-a" in detail
    assert never is None or never not in detail


def test_only_a_real_conversion_gets_a_google_alias(models_dir: Path) -> None:
    """`also_known_as` names Google's checkpoint only for mlx-community's conversion of it."""
    from app.runtime.catalog import accepted_model_ids

    assert accepted_model_ids("mlx-community/paligemma2-3b-mix-448-8bit") == [
        "mlx-community/paligemma2-3b-mix-448-8bit",
        "google/paligemma2-3b-mix-448",
    ]
    assert accepted_model_ids("/srv/models/mlx-community/paligemma2-3b-pt-224-bf16")[1:] == [
        "google/paligemma2-3b-pt-224"
    ]
    for local in ("/tmp/paligemma2-tiny", "local/paligemma2-3b-mix-448-8bit", "demo"):
        assert accepted_model_ids(local) == [local], local
    converted = models_dir / "mlx-community" / "paligemma2-tiny-8bit"
    shutil.copytree(models_dir / "local" / "tiny-b", converted)
    try:
        with serve(models_dir) as client:
            wait_healthy(client)
            models = listed(client)
            assert models["mlx-community/paligemma2-tiny-8bit"]["also_known_as"] == [
                "google/paligemma2-tiny"
            ]
            assert models["local/tiny-a"]["also_known_as"] == []
            by_alias = segment(client, model_id="google/paligemma2-tiny")
            assert by_alias.status_code == 200, by_alias.text
            assert by_alias.json()["model"] == "mlx-community/paligemma2-tiny-8bit"
    finally:
        shutil.rmtree(converted.parent)


def broken_copies(models_dir: Path) -> dict[str, str]:
    """Copies of tiny-b broken the ways a disk or a download breaks one; what the answer says."""
    source = models_dir / "local" / "tiny-b"
    cases = {
        "cut-short": "cut short",  # a download stopped halfway through the weights
        "bad-header": "impossible header",
        "bad-config": "config.json",
        "no-tokenizer": "tokenizer",
        "wrong-arch": "could not be loaded",  # whole files that still do not load
    }
    for name in cases:
        target = models_dir / "broken" / name
        shutil.copytree(source, target, dirs_exist_ok=True)
    weights = (source / "model.safetensors").read_bytes()
    (models_dir / "broken" / "cut-short" / "model.safetensors").write_bytes(weights[:-1000])
    (models_dir / "broken" / "bad-header" / "model.safetensors").write_bytes(b"\xff" * 64)
    (models_dir / "broken" / "bad-config" / "config.json").write_text("{not json")
    (models_dir / "broken" / "no-tokenizer" / "tokenizer.json").unlink()
    config = json.loads((source / "config.json").read_text())
    config["text_config"]["hidden_size"] = 32  # the weights are 64 wide: loading them fails
    (models_dir / "broken" / "wrong-arch" / "config.json").write_text(json.dumps(config))
    return {f"broken/{name}": says for name, says in cases.items()}


def test_a_broken_checkpoint_never_costs_the_resident_model(models_dir: Path) -> None:
    """Each is a 503 naming the checkpoint and the problem; the default stays loaded (or, if
    it had to be evicted before the failure showed, is loaded back) and answers at once."""
    cases = broken_copies(models_dir)
    try:
        with serve(models_dir) as client:
            wait_healthy(client)
            for model_id, says in cases.items():
                response = segment(client, model_id=model_id)
                assert response.status_code == 503, response.text
                detail = response.json()["detail"]
                assert model_id in detail and says in detail, detail
                assert listed(client)["local/tiny-a"]["loaded"], model_id
                after = segment(client)
                assert after.status_code == 200 and "load" not in after.json()["timings_ms"]
            assert client.get("/health").json()["status"] == "ok"
    finally:
        shutil.rmtree(models_dir / "broken")


def test_more_than_one_may_stay_loaded(models_dir: Path) -> None:
    with serve(models_dir, max_loaded_models=2) as client:
        wait_healthy(client)
        assert segment(client, model_id="local/tiny-b").status_code == 200
        models = listed(client)
        assert models["local/tiny-a"]["loaded"] and models["local/tiny-b"]["loaded"]
        assert "load" not in segment(client).json()["timings_ms"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads glibc's own count of memory in use")
def test_memory_stays_flat_across_many_model_swaps(models_dir: Path) -> None:
    """Each swap loads a checkpoint; what it leaves behind must not add up. (Building the
    modules used to leave ~210 KB per load in MLX's random key: a lazy chain of splits.)"""

    class MallInfo2(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)  # heap chunks in use + mmapped ones

    settings = Settings(  # type: ignore[call-arg]
        model="local/tiny-a",
        models_dir=models_dir,
        vae_path=models_dir / "local" / "tiny-a" / "vae-oid.npz",
        warmup=False,
    )
    pool = RunnerPool(settings)

    def swap(index: int) -> None:  # on one thread, as the worker runs them
        model_id = ("local/tiny-a", "local/tiny-b")[index % 2]
        request = ModelRequest(Image.new("RGB", (224, 224)), "segment cat", 4, model_id)
        runner, _ = pool.batch(model_id)
        events = runner.start("one", request)
        while not events or not isinstance(events[-1][1], ModelOutput):
            events += runner.step()

    def run() -> float:
        pool.load()
        for index in range(4):  # caches and allocator pools settle
            swap(index)
        before = in_use()
        for index in range(12):
            swap(index)
        return (in_use() - before) / 12

    per_swap = ThreadPoolExecutor(1).submit(run).result(timeout=300)
    assert per_swap < 20_000, f"{per_swap / 1024:.0f} KB left per swap"
