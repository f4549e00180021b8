"""Fetch the real weights from the Hugging Face Hub into models/, with errors a person can act on.

Only `make models` (scripts/download_models.py) calls this; the service never downloads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from app.runtime.catalog import checkpoint_problem

# big_vision's mask VAE; its public copy sits in the PaliGemma demo Space.
VAE_REPO = "google/paligemma-hf"
VAE_REPO_TYPE = "space"
VAE_FILENAME = "vae-oid.npz"
VAE_PAGE = f"https://huggingface.co/spaces/{VAE_REPO}/blob/main/{VAE_FILENAME}"
VAE_BIG_VISION = "gs://big_vision/paligemma/vae-oid.npz"


class DownloadError(Exception):
    """What failed and what to do about it."""


def download_model(repo_id: str, target: Path) -> Path:
    """An mlx-vlm PaliGemma checkpoint into `target` (resumable; files already there are kept)."""
    _guard(
        lambda: snapshot_download(repo_id, local_dir=target),
        what="model",
        repo=repo_id,
        page=f"https://huggingface.co/{repo_id}",
    )
    if not (target / "config.json").is_file():
        raise DownloadError(f"{repo_id} downloaded but has no config.json: is it an mlx-vlm model?")
    return target


def download_vae(target: Path) -> Path:
    """`vae-oid.npz` into `target` (a file path)."""
    _guard(
        lambda: hf_hub_download(
            VAE_REPO, VAE_FILENAME, repo_type=VAE_REPO_TYPE, local_dir=target.parent
        ),
        what="mask decoder",
        repo=f"{VAE_REPO} (Space)",
        page=f"https://huggingface.co/spaces/{VAE_REPO}",
        by_hand=(
            f"fetch {VAE_FILENAME} on a connected machine from {VAE_PAGE} (or big_vision's "
            f"{VAE_BIG_VISION}) and copy it to {target}"
        ),
    )
    downloaded = target.parent / VAE_FILENAME
    if downloaded != target:
        downloaded.replace(target)
    return target


def is_complete(target: Path) -> bool:
    """A checkpoint directory the service can load: configs, tokenizer, every weight file
    whole (an interrupted download is fetched again)."""
    return checkpoint_problem(target) is None


def _guard(
    fetch: Callable[[], object],
    *,
    what: str,
    repo: str,
    page: str,
    by_hand: str = "copy a checkpoint directory into models/<owner>/<name> by hand",
) -> None:
    """Run one hub call and turn its failures into a DownloadError that says what to do."""
    try:
        fetch()
    except GatedRepoError as exc:
        raise DownloadError(
            f"The {what} {repo} is gated: accept its licence at {page} with your account, then "
            "log in with `hf auth login` or set HF_TOKEN, and run `make models` again."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(
            f"The {what} {repo} was not found, or it is private and your token has no access. "
            "Check the id (SEGMENT_MODEL) and your login (`hf auth whoami`)."
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " Your token was refused: set a valid HF_TOKEN." if status == 401 else ""
        raise DownloadError(f"The Hub answered HTTP {status} for the {what} {repo}.{hint}") from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise DownloadError(
            f"Could not download the {what} {repo}: the Hugging Face Hub is unreachable "
            f"({exc.__class__.__name__}). Check your connection or proxy (HTTPS_PROXY); "
            f"HF_HUB_OFFLINE=1 forbids downloads. Offline, {by_hand}; or run `make demo` to try "
            "the service with a tiny random model."
        ) from exc
