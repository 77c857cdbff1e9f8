"""Training curves as a PNG, drawn from a Trainer's `state.log_history` with Pillow (no plotting dependency)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw


_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]
_CURVES = ("loss", "eval_loss", "vicreg_invariance", "vicreg_variance", "vicreg_covariance")


def curves_from_log_history(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """`{name: [(step, value), ...]}` for the losses found in the log history."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for name in _CURVES:
            value = entry.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                curves.setdefault(name, []).append((int(entry["step"]), float(value)))
    return curves


def plot_training_curves(
    log_history: list[dict], path: str | os.PathLike, title: str = "", width: int = 900, height: int = 420
) -> Path:
    """Plot the losses of `log_history` against the optimizer step into a PNG at `path` and return its path.

    The y axis is linear from 0 to the largest value; each curve gets its own colour and a legend entry.
    """
    curves = curves_from_log_history(log_history)
    if not curves:
        raise ValueError("the log history holds no loss values to plot (was logging_steps larger than the run?)")
    left, right, top, bottom = 70, 190, 40, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    max_step = max(step for points in curves.values() for step, _ in points) or 1
    max_value = max(value for points in curves.values() for _, value in points) or 1.0

    def to_pixel(step: float, value: float) -> tuple[float, float]:
        x = left + (width - left - right) * step / max_step
        y = height - bottom - (height - top - bottom) * value / max_value
        return x, y

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for tick in range(5):
        value = max_value * tick / 4
        _, y = to_pixel(0, value)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((8, y - 6), f"{value:.3g}", fill="black")
        x, _ = to_pixel(max_step * tick / 4, 0)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 10, height - bottom + 8), str(round(max_step * tick / 4)), fill="black")
    draw.text(((width - right + left) // 2 - 15, height - 20), "step", fill="black")
    draw.text((left, 12), title, fill="black")
    for index, (name, points) in enumerate(sorted(curves.items())):
        colour = _COLOURS[index % len(_COLOURS)]
        pixels = [to_pixel(step, value) for step, value in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for x, y in pixels:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        legend_y = top + 18 * index
        draw.line([width - right + 12, legend_y + 6, width - right + 32, legend_y + 6], fill=colour, width=3)
        draw.text((width - right + 38, legend_y), name, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


__all__ = ["curves_from_log_history", "plot_training_curves"]
