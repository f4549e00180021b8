"""The in-process API: PaliGemma output text -> objects with full-resolution masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.model.random_vae import write_random_vae
from app.model.vae import MaskDecoder
from app.steps.objects import objects_from_text


def test_objects_from_text(tmp_path: Path) -> None:
    decoder = MaskDecoder.load(write_random_vae(tmp_path / "vae-oid.npz"), upsample="matmul")
    codes = "".join(f"<seg{c:03d}>" for c in range(16))
    cat_box, car_box = "<loc0100><loc0200><loc0600><loc0700>", "<loc0000>" * 2 + "<loc0512>" * 2
    text = f"{cat_box}{codes} cat ; {car_box} car"
    cat, car = objects_from_text(text, 640, 480, decoder)
    assert (cat.label, cat.box) == ("cat", (125, 47, 438, 281))
    assert cat.mask is not None and cat.mask.shape == (480, 640) and cat.mask.dtype == np.bool_
    outside = cat.mask.copy()
    outside[47:281, 125:438] = False
    assert not outside.any()
    assert (car.label, car.box, car.mask) == ("car", (0, 0, 320, 240), None)  # detection only
    assert cat.score is None  # plain text carries no probabilities
