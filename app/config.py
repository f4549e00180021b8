"""Settings: read once from `SEGMENT_*` environment variables; every limit lives here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.keep_alive import keep_alive_seconds

DEFAULT_MODEL = "mlx-community/paligemma2-3b-mix-448-8bit"
# ~22 tokens per object (4 loc + 16 seg + label + separator): room for 8 objects and long labels.
DEFAULT_MAX_NEW_TOKENS = 256

CommaList = Annotated[list[str], NoDecode]  # "a, b" in the environment, a list in Python


class Settings(BaseSettings):
    """All configuration of the service. Create through `get_settings()`; tests build their own."""

    model_config = SettingsConfigDict(env_prefix="SEGMENT_", extra="ignore")

    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face id of an mlx-vlm PaliGemma checkpoint, or a local directory.",
    )
    vae_path: Path = Field(Path("models/vae-oid.npz"), description="big_vision's mask VAE.")
    models_dir: Path = Field(Path("models"), description="Where `make models` puts weights.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "info"

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Upload/URL body limit.")
    max_image_pixels: int = Field(50_000_000, ge=1, description="Refused before decoding.")
    max_prompt_chars: int = Field(512, ge=1)
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=4096)
    max_objects_per_class: int = Field(
        8, ge=1, description="Bounds new tokens per class (~24 tokens per object)."
    )
    # A burst from one local app fits; each waiting request holds the model-size image (JPEGs:
    # ~12 MB RSS per 12 MP upload while it waits, measured; PNGs more), so 32 stays < 0.5 GB.
    max_loaded_models: int = Field(
        1, ge=1, description="Checkpoints kept in memory at once; raise it if memory allows."
    )
    max_queue: int = Field(32, ge=1, description="Requests waiting for the model beyond this: 503.")
    request_timeout_s: float = Field(300.0, gt=0, description="Queue wait + inference: 504.")
    url_timeout_s: float = Field(10.0, gt=0, description="Connect/read timeout for image_url.")
    url_total_timeout_s: float = Field(30.0, gt=0, description="Whole image_url download.")
    url_max_redirects: int = Field(3, ge=0)
    warmup: bool = Field(True, description="One real generation at start-up before /health is ok.")
    # A login agent sits idle most of the day: 15 minutes keeps a working session's requests
    # warm (a reload costs seconds) and gives ~3 GB back to an 8-16 GB Mac soon after.
    keep_alive: str = Field(
        "15m", description="Idle time before the model is unloaded: 30s, 5m, 1h; 0; -1 never."
    )
    constrained: bool = Field(
        True, description="Keep generation inside the detect/segment output grammar."
    )
    png_compression: int = Field(1, ge=0, le=9, description="Mask PNG zlib level: speed first.")
    jpeg_draft: bool = Field(
        True, description="Decode big JPEGs at a DCT scale >= 2x the model input (faster)."
    )
    blas: Literal["auto", "bundled"] = Field(
        "auto", description="Linux: run MLX's CPU backend on OpenBLAS (read by `python -m app`)."
    )
    dtype: Literal["auto", "float32", "checkpoint"] = Field(
        "auto", description="auto: float32 on the MLX CPU backend when memory allows."
    )
    compat: Literal["none", "seed"] = Field(
        "none", description="seed: also answer with the old service's keys (image, masks)."
    )
    device: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="auto: the GPU when MLX has one (Metal, CUDA), else the CPU."
    )
    image_cache_entries: int = Field(16, ge=0, description="Images whose features are kept.")
    image_cache_mb: int = Field(512, ge=0, description="Memory budget of that cache.")

    # Who may call, and where image_url may point. Lists are comma-separated in the environment.
    allowed_hosts: CommaList = Field(
        [], description="Host header values accepted besides loopback names (DNS-rebinding guard)."
    )
    allowed_origins: CommaList = Field(
        [], description="Browser origins allowed to POST (and given CORS headers); '*' for any."
    )
    api_token: SecretStr | None = Field(
        None, description="When set, every endpoint but /health needs 'Authorization: Bearer'."
    )
    url_allowlist: CommaList = Field(
        [], description="Hosts, IPs or CIDRs image_url may reach although private or loopback."
    )

    @field_validator("allowed_hosts", "allowed_origins", "url_allowlist", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("keep_alive")
    @classmethod
    def _readable_duration(cls, value: str) -> str:
        keep_alive_seconds(value)  # raises with the accepted forms
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def model_path(self) -> Path:
        """Where `model` lives: itself if it is a directory, else models_dir/<hub id>."""
        as_path = Path(self.model).expanduser()
        if as_path.is_dir():
            return as_path
        return self.models_dir / self.model

    def is_local_model(self) -> bool:
        """A directory given as the model: nothing for `make models` to download."""
        return Path(self.model).expanduser().is_dir()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
