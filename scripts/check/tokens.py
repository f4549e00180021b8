"""Token counts of one request, counted again from the checkpoint's own processor.

Why here: the model side counts both (`Generation.prompt_tokens`, `.new_tokens`) but the
pipeline's `SegmentResult` does not carry them, so the check recounts: the prompt exactly as
`PaliGemma.prepare` builds it (the processor's `<image>` tokens plus the text), the generated
tokens by tokenizing the raw output text again (a loc/seg token is one token; a label
tokenizes as the model wrote it unless it chose an unusual split, which greedy decoding of a
known word does not). No MLX: plain Python, any thread.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def token_counts(checkpoint: Path, task_prompt: str, text: str) -> tuple[int, int]:
    """(prompt tokens, image tokens included; tokens generated, the stop token not counted)."""
    from transformers import AutoProcessor  # seconds to import: only when counting

    processor = AutoProcessor.from_pretrained(str(checkpoint))
    size = processor.image_processor.size
    blank = Image.new("RGB", (int(size["width"]), int(size["height"])))
    prompt = processor(images=[blank], text=[f"<image>{task_prompt}"], return_tensors="np")
    generated = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(prompt["input_ids"].shape[1]), len(generated)
