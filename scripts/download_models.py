"""`make models`: download the PaliGemma checkpoint and the mask VAE into models/.

    python scripts/download_models.py [--model ID] [--skip-vae]

The model defaults to SEGMENT_MODEL (or the service's default); a local directory is used as is.
Gated repositories use your Hugging Face login (`hf auth login`) or HF_TOKEN.
"""

from __future__ import annotations

import argparse
import sys

from app.config import Settings
from app.runtime.download import DownloadError, download_model, download_vae, is_complete


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=settings.model, help="Hub id or local directory.")
    parser.add_argument("--skip-vae", action="store_true", help="Only the language model.")
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"model": args.model})
    try:
        if settings.is_local_model():
            print(f"model: using the local directory {settings.model_path()}")
        elif is_complete(settings.model_path()):
            print(f"model: {settings.model} already in {settings.model_path()}")
        else:
            print(f"model: downloading {settings.model} into {settings.model_path()}")
            download_model(settings.model, settings.model_path())
        if not args.skip_vae:
            if settings.vae_path.is_file():
                print(f"vae: already at {settings.vae_path}")
            else:
                print(f"vae: downloading vae-oid.npz into {settings.vae_path}")
                download_vae(settings.vae_path)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("done: start the service with `make serve`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
