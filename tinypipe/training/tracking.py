"""What a run shows while it trains: `metrics.jsonl` always, and accelerate's trackers (TensorBoard, W&B) when asked.

- `check_report_to`: refuse a `report_to` that cannot work here (unknown, its package missing, TensorBoard without
  an `output_dir`) before any heavy work, with the command that installs what is missing.
- `tracker_arguments`: what `accelerate.Accelerator` is given for `report_to` (`log_with`, the logging folder).
- `RunMetrics`: one JSON object per optimizer step in `<output_dir>/metrics.jsonl` (step, loss, lr, epoch, elapsed
  seconds, grad_norm when computed), written as the run goes; a resumed run keeps the steps up to its checkpoint and
  appends after them. The same values go to the trackers, started with the run's resolved config.
- `log_images`: validation images to the trackers.
- `read_metrics`: the records of a `metrics.jsonl`.
- `write_run_record`: the record a saved repo keeps of its run (`trainer/metrics.jsonl`, `trainer/loss.png`).

Nothing here needs TensorBoard or W&B unless a run asks for them.
"""

import importlib.util
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import ConfigError, RepoError

logger = logging.getLogger(__name__)

__all__ = ["REPORT_TO", "METRICS_FILE", "TRACKER_PROJECT", "check_report_to", "tracker_arguments", "tracker_config",
           "RunMetrics", "log_images", "read_metrics", "write_run_record", "LOSS_PLOT"]

# report_to -> (the module it imports, the pip command that installs it)
REPORT_TO = {
    "none": None,
    "tensorboard": ("tensorboard", "pip install 'tinypipe[tensorboard]'  (or: pip install tensorboard)"),
    "wandb": ("wandb", "pip install 'tinypipe[wandb]'  (or: pip install wandb)"),
}
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
TRACKER_PROJECT = "tinypipe"
"""The W&B project of a run, and the sub-folder of `<output_dir>/logs/` its TensorBoard events go to."""


def check_report_to(report_to: Any, owner: str = "train()", *, output_dir: Any = ...) -> None:
    """Refuse a `report_to` that cannot work here, naming it and the fix.

    Args:
        report_to: "tensorboard", "wandb" or "none".
        owner: Where the setting comes from, for the message.
        output_dir: The run's `output_dir` (TensorBoard writes its event files below it); `...` when not known yet.

    Raises:
        ConfigError: An unknown value, a tracker whose package is not installed (with the pip command), or
            "tensorboard" without an `output_dir`.
    """
    if report_to not in REPORT_TO:
        raise ConfigError(f"{owner}: report_to {report_to!r} is not known; choose one of {list(REPORT_TO)}.")
    if REPORT_TO[report_to] is None:
        return
    module, install = REPORT_TO[report_to]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{owner}: report_to={report_to!r} needs the {module} package, which is not installed; "
                          f"install it with `{install}`, or set report_to='none' (metrics.jsonl is written either way).")
    if report_to == "tensorboard" and output_dir is None:
        raise ConfigError(f"{owner}: report_to='tensorboard' writes its event files below output_dir, and none is given; "
                          "give output_dir, or set report_to='none'.")


def tracker_arguments(report_to: str, output: Optional[Path]) -> dict[str, Any]:
    """The `accelerate.Accelerator` keyword arguments of `report_to`: `log_with` and, with an output, `project_dir`
    (TensorBoard's events then go to `<output>/logs/tinypipe/`)."""
    if REPORT_TO.get(report_to) is None:
        return {}
    from accelerate.utils import ProjectConfiguration

    arguments: dict[str, Any] = {"log_with": report_to}
    if output is not None:
        arguments["project_config"] = ProjectConfiguration(project_dir=str(output), logging_dir=str(Path(output) / "logs"))
    return arguments


def tracker_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The run's resolved config as trackers store it: numbers, strings and booleans as they are, None as "None",
    lists and mappings as JSON (TensorBoard's hyper-parameters take scalars only)."""
    plain: dict[str, Any] = {}
    for name, value in sorted(settings.items()):
        if isinstance(value, (bool, int, float, str)):
            plain[name] = value
        elif value is None:
            plain[name] = "None"
        else:
            plain[name] = json.dumps(value, sort_keys=True, default=str)
    return plain


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`, in order; a last line cut short by an interrupted write is left out.

    Raises:
        RepoError: A line other than the last is not a JSON object.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RepoError(f"{path} line {number} is not JSON; remove that line (or the file) and resume again.") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise RepoError(f"{path} line {number} is not a metrics record with a step; remove it and resume again.")
        records.append(record)
    return records


class RunMetrics:
    """The metrics of one run: `metrics.jsonl` in the output (main process) and the trackers of `report_to`.

    Args:
        accelerator: The run's accelerator (made with `tracker_arguments`).
        settings: The run's effective arguments: `report_to` and the config the trackers store.
        output: The run's `output_dir`, or None (no metrics.jsonl).
        resumed_step: The optimizer step the run resumes after (None: a fresh run, which starts the file anew).
    """

    def __init__(self, accelerator: Any, settings: Mapping[str, Any], output: Optional[Path], resumed_step: Optional[int]):
        self.accelerator = accelerator
        self.path = Path(output) / METRICS_FILE if output is not None and accelerator.is_main_process else None
        self.elapsed_before = 0.0
        if self.path is not None:
            self._keep_until(resumed_step or 0)
        self.started = time.monotonic()
        report_to = settings.get("report_to", "none")
        if REPORT_TO.get(report_to) is not None:
            init_kwargs = {"wandb": {"dir": str(output)}} if report_to == "wandb" and output is not None else {}
            accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(settings), init_kwargs=init_kwargs)

    def _keep_until(self, step: int) -> None:
        """Keep the records of steps up to `step` (those a resumed run already did), written anew atomically."""
        from ..files import write_atomic

        kept = [record for record in read_metrics(self.path) if record["step"] <= step]
        if kept:
            self.elapsed_before = float(kept[-1].get("elapsed", 0.0))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))

    def log_step(self, step: int, *, loss: float, learning_rate: float, epoch: int, grad_norm: Optional[float]) -> None:
        """Record optimizer step `step`: a line of `metrics.jsonl` and the trackers' `train/*` scalars."""
        record: dict[str, Any] = {"step": step, "loss": loss, "lr": learning_rate, "epoch": epoch,
                                  "elapsed": round(self.elapsed_before + time.monotonic() - self.started, 3)}
        if grad_norm is not None and math.isfinite(grad_norm):
            record["grad_norm"] = grad_norm
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(json.dumps(record, sort_keys=True) + "\n")
        if self.accelerator.trackers:
            scalars = {"train/loss": loss, "train/learning_rate": learning_rate, "train/epoch": epoch}
            if "grad_norm" in record:
                scalars["train/grad_norm"] = record["grad_norm"]
            self.accelerator.log(scalars, step=step)


def log_images(accelerator: Any, images: Mapping[str, Sequence[Any]], step: int) -> None:
    """Send images (name -> PIL images) to the run's trackers, if any; TensorBoard gets them as NHWC arrays."""
    if not accelerator.trackers or not accelerator.is_main_process:
        return
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            arrays = {name: np.stack([np.asarray(image.convert("RGB")) for image in group])
                      for name, group in images.items() if group}
            tracker.log_images(arrays, step=step, dataformats="NHWC")
        else:
            tracker.log_images({name: list(group) for name, group in images.items() if group}, step=step)


def write_run_record(records: Sequence[Mapping[str, Any]], folder: Path) -> None:
    """Write a run's `metrics.jsonl` and its loss curve `loss.png` into `folder` (the trainer's folder of a repo).

    Args:
        records: The run's metrics records (`read_metrics`); nothing is written when there are none.
        folder: Where they go.
    """
    if not records:
        return
    from .loss_plot import draw_loss_curve

    (folder / METRICS_FILE).write_text("".join(json.dumps(dict(record), sort_keys=True) + "\n" for record in records),
                                       encoding="utf-8")
    draw_loss_curve(records, folder / LOSS_PLOT)
