"""Training curves as PNGs, drawn from Trainer `state.log_history`s with Pillow (no plotting dependency).

`plot_training_curves` draws one stage: its losses (training loss, eval_loss, the VICReg terms) above, the learning
rate below, against the optimizer step (integer ticks). `plot_run_curves` draws the stages of a run one after the
other on one step axis, each stage's span marked and named. Nothing is drawn, and that is logged, when a history
holds no value to plot (a run shorter than `logging_steps` logs none); a run is never failed for want of a plot.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from configuration_panovlm.atomic_files import write_bytes_atomically


logger = logging.getLogger(__name__)

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]
_CURVES = ("loss", "eval_loss", "vicreg_invariance", "vicreg_variance", "vicreg_covariance")
_RATE = "learning_rate"
_GREY = (150, 150, 150)
Points = list[tuple[int, float]]


def curves_from_log_history(log_history: list[dict], names: Sequence[str] = _CURVES) -> dict[str, Points]:
    """`{name: [(step, value), ...]}` for the values of `names` found in the log history (finite numbers only)."""
    curves: dict[str, Points] = {}
    for entry in log_history:
        for name in names:
            value = entry.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                curves.setdefault(name, []).append((int(entry["step"]), float(value)))
    return curves


def integer_ticks(largest: int, most: int = 8) -> list[int]:
    """Evenly spaced whole steps from 0 to at least `largest`, at most `most` + 1 of them (spacing 1, 2, 5, 10...)."""
    largest = max(int(largest), 1)
    spacing = next(m * 10**e for e in range(19) for m in (1, 2, 5) if largest <= most * m * 10**e)
    return list(range(0, math.ceil(largest / spacing) * spacing + 1, spacing))


def plot_training_curves(
    log_history: list[dict], path: str | os.PathLike, title: str = "", width: int = 900, height: int = 420
) -> Path | None:
    """Plot one stage's losses and learning rate against the step into a PNG at `path`; returns its path, or None
    (logged) when the history holds nothing to plot."""
    losses = curves_from_log_history(log_history)
    rates = curves_from_log_history(log_history, (_RATE,)).get(_RATE, [])
    if not losses and not rates:
        logger.info("no loss or learning rate was logged (a run shorter than logging_steps?): no %s", path)
        return None
    series = {(name, 0): points for name, points in losses.items()}
    return _draw(series, {0: rates}, [], path, title, width, height)


def plot_run_curves(
    stages: Sequence[tuple[str, list[dict]]], path: str | os.PathLike, title: str = "", width: int = 1100, height: int = 420
) -> Path | None:
    """Plot several stages `(name, log_history)` one after the other on one step axis into a PNG at `path` (each
    stage's steps continue from the previous stage's last step); returns its path, or None (logged) when no stage
    logged anything to plot."""
    series: dict[tuple[str, int], Points] = {}
    rates: dict[int, Points] = {}
    spans, offset = [], 0
    for index, (name, history) in enumerate(stages):
        last = max((int(entry.get("step", 0)) for entry in history), default=0)
        for curve, points in curves_from_log_history(history).items():
            series[(curve, index)] = [(offset + step, value) for step, value in points]
        rate = curves_from_log_history(history, (_RATE,)).get(_RATE, [])
        rates[index] = [(offset + step, value) for step, value in rate]
        spans.append((offset, offset + last, name))
        offset += last
    if not series and not any(rates.values()):
        logger.info("no stage logged a loss or learning rate: no %s", path)
        return None
    return _draw(series, rates, spans, path, title, width, height)


def _draw(
    series: dict[tuple[str, int], Points],
    rates: dict[int, Points],
    spans: list[tuple[int, int, str]],
    path: str | os.PathLike,
    title: str,
    width: int,
    height: int,
) -> Path:
    left, right, top, bottom, gap = 80, 200, 40, 50, 40
    plot_right = width - right
    loss_bottom = top + int((height - top - bottom - gap) * 0.7)
    rate_top = loss_bottom + gap
    all_steps = [s for points in [*series.values(), *rates.values()] for s, _ in points] + [end for _, end, _ in spans]
    x_ticks = integer_ticks(max(all_steps, default=1))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def x_of(step: float) -> float:
        return left + (plot_right - left) * step / x_ticks[-1]

    def panel(y_top: int, y_bottom: int, values: list[float], label: str, fmt: str):
        low, high = min(0.0, *values), max(values)
        high = high if high > low else low + 1.0
        draw.rectangle([left, y_top, plot_right, y_bottom], outline="black")
        for tick in range(5 if y_bottom - y_top > 150 else 3):
            value = low + (high - low) * tick / (4 if y_bottom - y_top > 150 else 2)
            y = y_bottom - (y_bottom - y_top) * (value - low) / (high - low)
            draw.line([left - 4, y, left, y], fill="black")
            draw.text((6, y - 6), format(value, fmt), fill="black")
        draw.text((6, y_top - 22), label, fill="black")
        return lambda value: y_bottom - (y_bottom - y_top) * (value - low) / (high - low)

    loss_values = [v for points in series.values() for _, v in points]
    rate_values = [v for points in rates.values() for _, v in points]
    y_loss = panel(top, loss_bottom, loss_values or [1.0], "loss", ".3g")
    y_rate = panel(rate_top, height - bottom, rate_values or [1.0], "learning rate", ".2g")
    for step in x_ticks:
        x = x_of(step)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 3 * len(str(step)), height - bottom + 8), str(step), fill="black")
    draw.text(((plot_right + left) // 2 - 15, height - 20), "step", fill="black")
    draw.text((left, 12), title, fill="black")
    for start, end, name in spans:
        for y in range(top, height - bottom, 8):  # dashed separator at the stage's start
            draw.line([x_of(start), y, x_of(start), min(y + 4, height - bottom)], fill=_GREY)
        draw.text((x_of(start) + 4, top + 4), name, fill=_GREY)

    names = sorted({name for name, _ in series})
    colours = {name: _COLOURS[index % len(_COLOURS)] for index, name in enumerate(names)}
    for (name, _), points in series.items():
        _polyline(draw, [(x_of(s), y_loss(v)) for s, v in points], colours[name])
    for points in rates.values():
        _polyline(draw, [(x_of(s), y_rate(v)) for s, v in points], (0, 0, 0))
    for index, name in enumerate([*names, _RATE] if rate_values else names):
        colour = colours.get(name, (0, 0, 0))
        legend_y = top + 18 * index
        draw.line([plot_right + 12, legend_y + 6, plot_right + 32, legend_y + 6], fill=colour, width=3)
        draw.text((plot_right + 38, legend_y), name, fill="black")
    return _save_atomically(image, Path(path))


def _polyline(draw: ImageDraw.ImageDraw, pixels: list[tuple[float, float]], colour: tuple[int, int, int]) -> None:
    if len(pixels) > 1:
        draw.line(pixels, fill=colour, width=2)
    for x, y in pixels:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def _save_atomically(image: Image.Image, path: Path) -> Path:
    """Save the PNG through the project's atomic writer: no reader sees half a file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes_atomically(path, buffer.getvalue())


__all__ = ["curves_from_log_history", "integer_ticks", "plot_run_curves", "plot_training_curves"]
