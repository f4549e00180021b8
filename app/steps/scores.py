"""How a score reads to people (overlay labels, the CLI's lines), as the playground writes it:
a percentage with the digits that tell small ones apart (91%, 4.2%, 0.16%), so the demo's
near-zero scores do not all read 0.00."""

from __future__ import annotations


def score_text(score: float) -> str:
    percent = score * 100
    if percent >= 10 or percent == 0:
        return f"{round(percent)}%"
    if percent < 0.001:
        return "<0.001%"
    return f"{float(f'{percent:.2g}'):g}%"
