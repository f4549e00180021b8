"""Settings: read once from `SEGMENT_*` environment variables; every limit lives here.

Every value is either refused at start-up (`SettingsError`: one line per problem, naming the
variable, what was given and what is accepted) or works for every request: each number has an
upper bound below anything that overflows where it is used.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, cast

from annotated_types import Ge, Gt, Le
from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.config.values import (
    allowed_host,
    bind_host,
    keep_alive_seconds,
    origin,
    sendable_token,
    url_allowlist_entry,
)

DEFAULT_MODEL = "mlx-community/paligemma2-3b-mix-448-8bit"
# SEGMENT_MODEL=demo: the tiny random-weight model, built on first use into the models directory.
DEMO_MODEL = "demo"
DEMO_DIR_NAME = "paligemma2-tiny-random"
VAE_FILE = "vae-oid.npz"
CHECKOUT = Path(__file__).resolve().parents[2]
# ~22 tokens per object (4 loc + 16 seg + label + separator): room for 8 objects and long labels.
DEFAULT_MAX_NEW_TOKENS = 256

# A request or an image download still going after a day is hung, not slow (at most 4096 new
# tokens); a day is also far below anything asyncio's clock, timedelta or httpx overflow on.
MAX_WAIT_S = 24 * 3600.0
# Pillow refuses bigger images itself (images.py turns its DecompressionBombWarning into 413), so
# a larger SEGMENT_MAX_IMAGE_PIXELS would promise what no request gets. Pillow's own default.
MAX_IMAGE_PIXELS = 89_478_485
# Holds any image within MAX_IMAGE_PIXELS even uncompressed (16-bit RGBA: 716 MB); a larger
# limit would only let a request make the service hold more.
MAX_UPLOAD_BYTES = 1024**3
# Names both logging and uvicorn know (uvicorn has no "warn"/"fatal", logging no "trace").
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
SHOWN_CHARS = 60  # a value quoted in an error is cut to this

# "a, b" in the environment, a list in Python; each entry checked (and normalised) on its own.
HostList = Annotated[list[Annotated[str, AfterValidator(allowed_host)]], NoDecode]
OriginList = Annotated[list[Annotated[str, AfterValidator(origin)]], NoDecode]
AllowList = Annotated[list[Annotated[str, AfterValidator(url_allowlist_entry)]], NoDecode]
Seconds = Annotated[float, Field(gt=0, le=MAX_WAIT_S, allow_inf_nan=False)]


class Settings(BaseSettings):
    """All configuration of the service. Create through `get_settings()`; tests build their own."""

    # Values stay out of pydantic's error text: SEGMENT_API_TOKEN must never reach a log.
    model_config = SettingsConfigDict(
        env_prefix="SEGMENT_", extra="ignore", hide_input_in_errors=True
    )

    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face id of an mlx-vlm PaliGemma checkpoint, a local directory, or "
        "`demo` (a tiny random-weight model, built on first use).",
    )
    # Given or not, both end up absolute (the validator below): messages name real places, and
    # a script run from another directory finds the same weights.
    vae_path: Path = Field(
        Path(VAE_FILE),
        description="big_vision's mask VAE; default SEGMENT_MODELS_DIR/vae-oid.npz (the demo's "
        "own with SEGMENT_MODEL=demo).",
    )
    models_dir: Path = Field(
        default_factory=lambda: default_models_dir(),
        description="Where `make models` puts weights: the checkout's models/ by default.",
    )
    host: Annotated[str, AfterValidator(bind_host)] = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = Field("info", description="critical, error, warning, info or debug.")

    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1, le=MAX_UPLOAD_BYTES, description="Upload/URL body limit."
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, le=MAX_IMAGE_PIXELS, description="Refused before decoding."
    )
    # 8x the default: beside 1024 image tokens (448 px) and the answer, still inside PaliGemma
    # 2's 8192-token context (a 4094-character, 601-class prompt runs fine on the tiny model).
    max_prompt_chars: int = Field(512, ge=1, le=4096)
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=4096)
    # Past 4096 / 24 = 170 objects the token ceiling binds first; 256 leaves room.
    max_objects_per_class: int = Field(
        8, ge=1, le=256, description="Bounds new tokens per class (~24 tokens per object)."
    )
    # Each checkpoint holds 2-10 GB: 16 of them is past any one machine's useful mix.
    max_loaded_models: int = Field(
        1, ge=1, le=16, description="Checkpoints kept in memory at once; raise it if memory allows."
    )
    # A burst from one local app fits; each waiting request holds the model-size image (JPEGs:
    # ~12 MB RSS per 12 MP upload while it waits, measured; PNGs more), so 32 stays < 0.5 GB.
    # At most 128: each also holds a connection, and macOS gives a process 256 open files.
    max_queue: int = Field(
        32, ge=1, le=128, description="Requests waiting for the model beyond this: 503."
    )
    # Sequences of one model decoding together. A step reads the weights once for all of them,
    # so it costs little more than one sequence's; each holds its own KV cache (PaliGemma 2 3B:
    # ~106 KB per token in bf16, so ~40 MB at 224 px and ~120 MB at 448 px).
    max_batch: int = Field(
        8, ge=1, le=64, description="Requests decoding together (continuous batching)."
    )
    request_timeout_s: Seconds = Field(300.0, description="Queue wait + inference: 504.")
    url_timeout_s: Seconds = Field(10.0, description="Connect/read timeout for image_url.")
    url_total_timeout_s: Seconds = Field(30.0, description="Whole image_url download.")
    url_max_redirects: int = Field(3, ge=0, le=20)  # browsers follow 20
    warmup: bool = Field(True, description="One real generation when the model loads, first.")
    # A developer wants errors at once (`make serve`); a login agent that may sit unused all
    # day loads on the first request instead, as Ollama does.
    preload: bool = Field(
        True, description="Load the model at start-up; false: on the first request."
    )
    load_retry_s: Seconds = Field(
        30.0,
        description="After a failed start: how often to look whether the model has appeared "
        "(requests always retry).",
    )
    log_file: Path | None = Field(
        None, description="Log here instead of stderr, rotated by size (the login agent's)."
    )
    # 4 files of 5 MB: months of a quiet agent's lines, and a bounded disk if something loops.
    log_max_mb: int = Field(5, ge=1, le=1024, description="Size at which the log file rotates.")
    # At least 1: with none, Python's rotating handler never rotates at all.
    log_backups: int = Field(3, ge=1, le=100, description="Rotated log files kept.")
    # A login agent sits idle most of the day: 15 minutes keeps a working session's requests
    # warm (a reload costs seconds) and gives ~3 GB back to an 8-16 GB Mac soon after.
    keep_alive: str = Field(
        "15m",
        description="Idle time before the model is unloaded: 30s, 5m, 1h (at most 168h); 0; -1 "
        "never.",
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
    # An entry is >= 1.2 MB (224 px, bf16), so the MB budget binds long before 10,000 entries.
    image_cache_entries: int = Field(
        16, ge=0, le=10_000, description="Images whose features are kept."
    )
    image_cache_mb: int = Field(  # 1 TiB: more than any Mac's memory
        512, ge=0, le=1024 * 1024, description="Memory budget of that cache."
    )
    # MLX's own default on its CPU backend is 32 MB, which makes the mask decoder reallocate
    # its buffers on every call (1.8x slower at 16 masks); on Metal MLX's default is kept.
    cpu_cache_mb: int = Field(
        1024, ge=0, le=1024 * 1024, description="MLX's buffer cache on its CPU backend."
    )
    # Full-resolution work (decoding, placing masks, drawing the overlay) holds up to ~20 bytes
    # per pixel of a 50 MP image while it runs (measured: ~1 GB with an overlay); one request
    # at a time keeps bursts of big photos from adding those up, and costs little: a 12 MP
    # photo's share is a fraction of a second beside seconds of generation.
    image_workers: int = Field(
        1, ge=1, le=16, description="Requests doing full-resolution image work at once."
    )

    # Who may call, and where image_url may point. Lists are comma-separated in the environment.
    allowed_hosts: HostList = Field(
        [], description="Host header values accepted besides loopback names (DNS-rebinding guard)."
    )
    allowed_origins: OriginList = Field(
        [], description="Browser origins allowed to POST (and given CORS headers); '*' for any."
    )
    api_token: SecretStr | None = Field(
        None, description="When set, every endpoint but /health needs 'Authorization: Bearer'."
    )
    url_allowlist: AllowList = Field(
        [], description="Hosts, IPs or CIDRs image_url may reach although private or loopback."
    )

    @field_validator("allowed_hosts", "allowed_origins", "url_allowlist", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            parts = [part.strip() if isinstance(part, str) else part for part in value]
            return [part for part in parts if part != ""]
        return value

    @field_validator("host", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.strip().lower() not in LOG_LEVELS:
            raise ValueError(f"is not a log level: use one of {', '.join(LOG_LEVELS)} (any case).")
        return value.strip().lower()

    @field_validator("log_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_file")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is not None and value.expanduser().is_dir():
            raise ValueError(
                "is a directory: use a file path in it, e.g. "
                "~/Library/Logs/paligemma-segment/service.log."
            )
        return value

    @field_validator("keep_alive")
    @classmethod
    def _readable_duration(cls, value: str) -> str:
        keep_alive_seconds(value)  # raises saying what is accepted
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # Stripped as the guard strips what clients send, so "abc " still matches "Bearer abc".
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("api_token")
    @classmethod
    def _sendable_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            sendable_token(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _absolute_places(self) -> Settings:
        given = set(self.model_fields_set)
        self.models_dir = self.models_dir.expanduser().absolute()
        if "vae_path" not in given:
            home = self.demo_path() if self.model == DEMO_MODEL else self.models_dir
            self.vae_path = home / VAE_FILE
        self.vae_path = self.vae_path.expanduser().absolute()
        self.model_fields_set.intersection_update(given)  # what was given, not what was derived
        return self

    def model_path(self) -> Path:
        """Where `model` lives (absolute): itself if it is a directory, the demo's directory,
        else models_dir/<hub id>."""
        if self.model == DEMO_MODEL:
            return self.demo_path()
        as_path = Path(self.model).expanduser()
        if as_path.is_dir():
            return as_path.absolute()
        return self.models_dir / self.model

    def model_locations(self) -> list[Path]:
        """Every place `model` may have meant, for a message saying where it was looked for:
        a directory (relative to here) and models_dir/<hub id>."""
        as_path = Path(self.model).expanduser()
        places = [self.model_path()]
        looks_like_a_path = self.model.startswith((".", "/", "~")) or as_path.parent.is_dir()
        if looks_like_a_path and self.model != DEMO_MODEL and as_path.absolute() not in places:
            places.insert(0, as_path.absolute())
        return places

    def demo_path(self) -> Path:
        return self.models_dir / DEMO_DIR_NAME

    def is_local_model(self) -> bool:
        """A directory given as the model, or the demo: nothing for `make models` to download."""
        return self.model == DEMO_MODEL or Path(self.model).expanduser().is_dir()

    def with_model(self, model: str) -> Settings:
        """These settings with another default model (the CLI's --model); a mask decoder that
        was not set follows the model, as it would have at start-up."""
        keep = self.model_fields_set | {"model"}
        if "vae_path" not in self.model_fields_set:
            keep -= {"vae_path"}
        data = self.model_dump(include=keep)
        return type(self)(**{**data, "model": model})


def default_models_dir() -> Path:
    """The checkout's models/ (where `make models` puts weights) when running from one, which
    `make install` always does; a user-level folder for an installed package."""
    if (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / "models"
    return Path.home() / ".cache" / "paligemma-segment" / "models"


class SettingsError(ValueError):
    """SEGMENT_* values the service cannot use; `problems` holds one plain line for each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def settings_problems(error: ValidationError) -> list[str]:
    """One line per problem: `SEGMENT_X='given' is ...: use ...` (the token is never shown)."""
    return [_problem_line(detail) for detail in error.errors()]


_WRONG = {
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "int_parsing_size": "is not a whole number the service can hold",
    "float_parsing": "is not a number",
    "finite_number": "is not a finite number",
    "greater_than": "is out of range",
    "greater_than_equal": "is out of range",
    "less_than": "is out of range",
    "less_than_equal": "is out of range",
    "bool_parsing": "is not true or false",
    "literal_error": "is not one of the choices",
}


def _problem_line(detail: ErrorDetails) -> str:
    field, *index = detail["loc"]
    name = f"SEGMENT_{str(field).upper()}"
    if field == "api_token":
        subject = f"{name} (its value not shown)"
    elif index:
        subject = f"{name} entry {_shown(detail['input'])}"
    else:
        subject = f"{name}={_shown(detail['input'])}"
    if detail["type"] == "value_error":  # our validators: "is ...: use ..."
        return f"{subject} {detail.get('ctx', {}).get('error', detail['msg'])}"
    wrong = _WRONG.get(detail["type"], f"is not accepted ({detail['msg']})")
    return f"{subject} {wrong}: use {_accepted(str(field), detail)}."


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return repr(text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "...")


def _accepted(field: str, detail: ErrorDetails) -> str:
    """What the field takes, from its own type and bounds (so the message cannot drift)."""
    info = Settings.model_fields[field]
    if detail["type"] == "literal_error":
        return str(detail.get("ctx", {}).get("expected", "one of the documented values"))
    if info.annotation is bool:
        return "true or false (also 1/0, yes/no, on/off)"
    bounds: dict[str, float] = {}
    for rule in info.metadata:
        if isinstance(rule, Ge | Gt | Le):
            bounds.update({k: cast(float, v) for k, v in asdict(rule).items()})  # {"le": 9}
    if info.annotation is float and {"gt", "le"} <= bounds.keys():
        return (
            f"a number of seconds above {bounds['gt']:g}, at most {bounds['le']:g} "
            f"({bounds['le'] / 3600:g} hours)"
        )
    if info.annotation is int and {"ge", "le"} <= bounds.keys():
        return f"a whole number from {bounds['ge']:,} to {bounds['le']:,}"
    return "a value of the documented form"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment; SettingsError if unusable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(settings_problems(exc)) from None
