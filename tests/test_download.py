"""`make models`: the hub is mocked at its boundary (snapshot_download / hf_hub_download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from safetensors.numpy import save_file

from app.runtime import download
from app.runtime.download import DownloadError, download_model, download_vae, is_complete
from scripts import download_models

REPO = "mlx-community/paligemma2-3b-mix-448-8bit"


def write_checkpoint(directory: Path, shards: tuple[str, ...] = ("model.safetensors",)) -> None:
    """The files a checkpoint needs to count as whole, with toy contents."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "paligemma"}')
    (directory / "preprocessor_config.json").write_text('{"size": {"height": 224}}')
    (directory / "tokenizer.json").write_text("{}")
    for shard in shards:
        save_file({"w": np.zeros((4, 4), np.float32)}, directory / shard)


def _fake_snapshot(calls: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    def snapshot_download(repo_id: str, *, local_dir: Path, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, "local_dir": Path(local_dir), **kwargs})
        write_checkpoint(Path(local_dir))
        return str(local_dir)

    return snapshot_download


def _fake_vae(calls: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    def hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        path = Path(kwargs["local_dir"]) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"npz")
        return str(path)

    return hf_hub_download


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x"))


def test_model_downloads_into_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(download, "snapshot_download", _fake_snapshot(calls))
    target = tmp_path / REPO
    assert download_model(REPO, target) == target
    assert calls == [{"repo_id": REPO, "local_dir": target}]
    assert is_complete(target)


def test_vae_comes_from_the_paligemma_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(download, "hf_hub_download", _fake_vae(calls))
    target = tmp_path / "vae" / "custom-name.npz"
    assert download_vae(target) == target and target.read_bytes() == b"npz"
    [call] = calls
    assert (call["repo_id"], call["filename"], call["repo_type"]) == (
        "google/paligemma-hf",
        "vae-oid.npz",
        "space",
    )


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (GatedRepoError("gated", response=_response(403)), "hf auth login"),
        (RepositoryNotFoundError("missing", response=_response(404)), "not found"),
        (HfHubHTTPError("nope", response=_response(401)), "HF_TOKEN"),
        (HfHubHTTPError("down", response=_response(503)), "HTTP 503"),
        (OSError("Name or service not known"), "unreachable"),
    ],
)
def test_hub_failures_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, says: str
) -> None:
    def failing(*args: Any, **kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(download, "snapshot_download", failing)
    with pytest.raises(DownloadError, match=says):
        download_model(REPO, tmp_path / REPO)


def test_offline_the_real_hub_client_fails_with_a_clear_message(tmp_path: Path) -> None:
    """No mock at all: HF_HUB_OFFLINE=1 (set for every test) makes the real client refuse."""
    with pytest.raises(DownloadError, match="unreachable"):
        download_model(REPO, tmp_path / REPO)
    with pytest.raises(DownloadError, match="make demo") as failed:
        download_vae(tmp_path / "vae-oid.npz")
    # Offline, the message says where the file comes from and where to put it.
    assert "spaces/google/paligemma-hf/blob/main/vae-oid.npz" in str(failed.value)
    assert "gs://big_vision/paligemma/vae-oid.npz" in str(failed.value)
    assert str(tmp_path / "vae-oid.npz") in str(failed.value)


def test_an_interrupted_sharded_download_is_not_complete(tmp_path: Path) -> None:
    shards = ("model-00001.safetensors", "model-00002.safetensors")
    write_checkpoint(tmp_path, shards[:1])
    index = {"weight_map": {"a": shards[0], "b": shards[1]}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert not is_complete(tmp_path)  # a shard missing
    whole = (tmp_path / shards[0]).read_bytes()
    (tmp_path / shards[1]).write_bytes(whole[:-10])
    assert not is_complete(tmp_path)  # a shard cut short
    (tmp_path / shards[1]).write_bytes(whole)
    assert is_complete(tmp_path)


def test_make_models_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEGMENT_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("SEGMENT_VAE_PATH", str(tmp_path / "vae-oid.npz"))
    model_calls: list[dict[str, Any]] = []
    vae_calls: list[dict[str, Any]] = []
    monkeypatch.setattr(download, "snapshot_download", _fake_snapshot(model_calls))
    monkeypatch.setattr(download, "hf_hub_download", _fake_vae(vae_calls))
    assert download_models.main(["--model", REPO]) == 0
    assert model_calls[0]["local_dir"] == tmp_path / REPO and len(vae_calls) == 1
    assert download_models.main(["--model", REPO]) == 0  # second run: nothing to fetch
    assert len(model_calls) == 1 and len(vae_calls) == 1
    assert "already" in capsys.readouterr().out


def test_make_models_script_fails_cleanly_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEGMENT_MODELS_DIR", str(tmp_path))
    assert download_models.main(["--model", REPO]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unreachable" in err and "Traceback" not in err
