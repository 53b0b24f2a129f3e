"""The loss curve of a run (`loss.png`), drawn from its `metrics.jsonl` with PIL.

PIL is already a dependency; one line chart (axes, ticks, the loss per optimizer step and its moving average) does
not justify matplotlib and its compiled dependencies for every install.

```python
from tinypipe.training.loss_plot import draw_loss_curve
from tinypipe.training.tracking import read_metrics

draw_loss_curve(read_metrics("out/metrics.jsonl"), "out/loss.png")
```
"""

import io
import math
from pathlib import Path
from typing import Any, Sequence, Union

from PIL import Image, ImageDraw, ImageFont

from ..files import write_atomic

__all__ = ["draw_loss_curve", "nice_ticks"]

_SIZE = (640, 400)
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 36, 52
_RAW, _SMOOTH, _AXES, _GRID = (150, 180, 230), (30, 80, 170), (40, 40, 40), (225, 225, 225)


def nice_ticks(low: float, high: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 x 10^n; at least 1 when `whole`) covering `low`..`high`."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw_step = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(factor * magnitude for factor in (1, 2, 5, 10) if factor * magnitude >= raw_step)
    if whole:
        step = max(step, 1)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averaged.append(total / min(index + 1, window))
    return averaged


def draw_loss_curve(records: Sequence[dict[str, Any]], path: Union[str, Path], *, title: str = "Training loss") -> Path:
    """Draw the loss of each optimizer step (and, from 10 steps on, its moving average) into the PNG `path`.

    Args:
        records: `metrics.jsonl` records (`step`, `loss`), in step order.
        path: The PNG to write.
        title: The chart's title.

    Returns:
        `path`.
    """
    points = [(record["step"], float(record["loss"])) for record in records
              if isinstance(record.get("loss"), (int, float)) and math.isfinite(record["loss"])]
    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width, height = _SIZE
    box = (_LEFT, _TOP, width - _RIGHT, height - _BOTTOM)
    draw.text((_LEFT, 10), title, fill=_AXES, font=font)
    draw.text(((box[0] + box[2]) // 2 - 40, height - 22), "optimizer step", fill=_AXES, font=font)
    draw.text((8, 10), "loss", fill=_AXES, font=font)
    if not points:
        draw.text((box[0] + 10, (box[1] + box[3]) // 2), "no steps recorded", fill=_AXES, font=font)
    else:
        steps, losses = [step for step, _ in points], [loss for _, loss in points]
        x_ticks = nice_ticks(min(steps), max(steps), whole=True)
        y_ticks = nice_ticks(min(losses), max(losses))
        x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

        def at(step: float, loss: float) -> tuple[float, float]:
            x = box[0] + (step - x_low) / ((x_high - x_low) or 1) * (box[2] - box[0])
            y = box[3] - (loss - y_low) / ((y_high - y_low) or 1) * (box[3] - box[1])
            return x, y

        for tick in y_ticks:
            _, y = at(x_low, tick)
            draw.line([(box[0], y), (box[2], y)], fill=_GRID)
            draw.text((8, y - 6), _label(tick), fill=_AXES, font=font)
        for tick in x_ticks:
            x, _ = at(tick, y_low)
            draw.line([(x, box[3]), (x, box[3] + 4)], fill=_AXES)
            draw.text((x - 6, box[3] + 8), _label(tick), fill=_AXES, font=font)
        line = [at(step, loss) for step, loss in points]
        if len(line) == 1:
            x, y = line[0]
            draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=_SMOOTH)
        else:
            draw.line(line, fill=_RAW if len(points) >= 10 else _SMOOTH, width=1 if len(points) >= 10 else 2)
        if len(points) >= 10:
            smooth = _moving_average(losses, max(2, len(points) // 20))
            draw.line([at(step, loss) for step, loss in zip(steps, smooth)], fill=_SMOOTH, width=2)
    draw.rectangle(box, outline=_AXES)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    write_atomic(path, encoded.getvalue())
    return path
