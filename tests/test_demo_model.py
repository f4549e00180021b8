"""`demo` is a model name everywhere, and models are found from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.errors import NotReady
from app.runtime.catalog import installed_paths, resolve
from tests.images import gradient

ROOT = Path(__file__).resolve().parent.parent


def test_demo_settings_point_at_the_demo_directory_and_its_decoder(tmp_path: Path) -> None:
    settings = Settings(model="demo", models_dir=tmp_path)
    assert settings.model_path() == tmp_path / "paligemma2-tiny-random"
    assert settings.vae_path == tmp_path / "paligemma2-tiny-random" / "vae-oid.npz"
    assert settings.is_local_model()  # nothing for `make models` to download
    given = Settings(model="demo", models_dir=tmp_path, vae_path=tmp_path / "mine.npz")
    assert given.vae_path == tmp_path / "mine.npz"  # a decoder that was set stays


def test_the_demo_is_built_on_first_use_and_reused(tmp_path: Path) -> None:
    settings = Settings(model="demo", models_dir=tmp_path)
    assert installed_paths(settings) == {}
    checkpoint = resolve(settings, None)
    assert checkpoint.id == "demo" and checkpoint.random_weights
    assert (checkpoint.path / "model.safetensors").is_file() and settings.vae_path.is_file()
    built = (checkpoint.path / "model.safetensors").stat().st_mtime_ns
    assert resolve(settings, "demo").path == checkpoint.path
    assert (checkpoint.path / "model.safetensors").stat().st_mtime_ns == built
    assert not list(tmp_path.glob(".*partial"))  # built beside its place, then renamed in


def test_model_id_demo_works_beside_another_default(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)  # the real model, not installed here
    with pytest.raises(NotReady):
        resolve(settings, None)
    assert resolve(settings, "demo").random_weights
    assert "demo" in installed_paths(settings)  # /models lists it once it exists


def test_segmenter_runs_the_demo_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.segmenter import Segmenter

    monkeypatch.chdir(tmp_path)
    gradient(80, 60).save("photo.jpg")
    with Segmenter.load(Settings(model="demo", models_dir=tmp_path / "m", warmup=False)) as seg:
        result = seg.segment("photo.jpg", "cat ; dog")
    assert [o.label for o in result.objects] == ["cat", "dog"]
    assert result.model == "demo"


def test_the_models_directory_does_not_depend_on_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.models_dir == ROOT / "models"  # the checkout's, absolute
    assert settings.vae_path == ROOT / "models" / "vae-oid.npz"
    assert Settings(models_dir=Path("here")).models_dir == tmp_path / "here"


def test_a_missing_model_names_every_absolute_place_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    settings = Settings(model="models/mine", models_dir=tmp_path / "store")
    with pytest.raises(NotReady) as caught:
        resolve(settings, None)
    said = caught.value.detail
    assert str(tmp_path / "models" / "mine") in said  # the directory it may have meant
    assert str(tmp_path / "store" / "models" / "mine") in said  # or a Hub id in the store
    assert "SEGMENT_MODEL=demo" in said


def test_with_model_keeps_what_was_set_and_derives_the_rest(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, max_batch=3)
    demo = settings.with_model("demo")
    assert demo.model == "demo" and demo.max_batch == 3
    assert demo.vae_path == tmp_path / "paligemma2-tiny-random" / "vae-oid.npz"
    pinned = Settings(models_dir=tmp_path, vae_path=tmp_path / "v.npz").with_model("demo")
    assert pinned.vae_path == tmp_path / "v.npz"
