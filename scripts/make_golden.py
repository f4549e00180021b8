"""Write tests/data/golden_objects.npz: the expected objects for one fixed output text.

    python -m scripts.make_golden

A random mask decoder (app/model/random_vae.py, seed 0) decodes an output whose objects are
detect-only ; segmented ; segmented, placed in a 200x120 image. The tests compare the
in-process API and the HTTP service against it, so a swapped, flipped, transposed or mis-paired
mask fails. Regenerate only when a change is meant to alter masks, and say why in the commit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 200, 120
TEXT = (
    "<loc0050><loc0100><loc0400><loc0300> car ; "
    "<loc0100><loc0150><loc0900><loc0600>"
    + "".join(
        f"<seg{c:03d}>" for c in (3, 17, 90, 41, 5, 127, 64, 8, 77, 12, 33, 101, 0, 56, 99, 24)
    )
    + " cat ; "
    "<loc0500><loc0550><loc1000><loc0980>"
    + "".join(f"<seg{c:03d}>" for c in range(112, 128))
    + " dog"
)
GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden_objects.npz"


def main() -> None:
    from app.model.random_vae import write_random_vae
    from app.model.vae import MaskDecoder
    from app.steps.objects import objects_from_text

    with tempfile.TemporaryDirectory() as tmp:
        decoder = MaskDecoder.load(write_random_vae(Path(tmp) / "vae-oid.npz", seed=0))
    objects = objects_from_text(TEXT, WIDTH, HEIGHT, decoder)
    masks = np.stack(
        [o.mask if o.mask is not None else np.zeros((HEIGHT, WIDTH), bool) for o in objects]
    )  # (3, HEIGHT, WIDTH)
    np.savez_compressed(
        GOLDEN,
        text=np.array(TEXT),
        size=np.array([WIDTH, HEIGHT]),
        labels=np.array([o.label for o in objects]),
        boxes=np.array([o.box for o in objects]),
        has_mask=np.array([o.mask is not None for o in objects]),
        mask_bits=np.packbits(masks, axis=-1),
    )
    print(
        GOLDEN, [(o.label, o.box, None if o.mask is None else int(o.mask.sum())) for o in objects]
    )


if __name__ == "__main__":
    main()
