"""What the web UI shows of a job, read from the job store and the job's repo folder (nothing here writes).

- `job_summary`: one row of the jobs list (name, method, model, status, progress with ETA, started, duration).
- `validation_images`, `checkpoints`: what a job's repo holds so far (its page lists them while it runs).
- `repo_file`: a file of a job's repo that the UI may serve, never one outside it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..jobs import ACTIVE, Job, format_duration, format_time, read_progress

__all__ = ["JobSummary", "job_summary", "validation_images", "checkpoints", "repo_file", "IMAGE_TYPES"]

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


@dataclass(frozen=True)
class JobSummary:
    """A job as the jobs list and the job page show it."""

    id: str
    name: str
    kind: str
    method: str
    model: str
    status: str
    active: bool
    progress: str  # "12/300" or ""
    percent: Optional[int]
    eta: str  # "0:02:00" left, or ""
    started: str
    duration: str
    error: Optional[str]


def job_summary(job: Job) -> JobSummary:
    """The row of `job` in the jobs list: its progress (from the progress bar in its log) only while it runs."""
    progress = read_progress(job.log_file) if job.status == "running" else None
    return JobSummary(
        id=job.id, name=job.name, kind=job.kind, method=job.method, model=str(job.arguments.get("model", "")),
        status=job.status, active=job.status in ACTIVE,
        progress=f"{progress.step}/{progress.total}" if progress else "",
        percent=round(100 * progress.step / progress.total) if progress and progress.total else None,
        eta=format_duration(progress.seconds_left) if progress and progress.seconds_left is not None else "",
        started=format_time(job.started_at), duration=format_duration(job.duration), error=job.error,
    )


def validation_images(repo: Path) -> list[tuple[str, list[str]]]:
    """The validation images of a repo, per epoch: `[("epoch-0001", ["validation/epoch-0001/image-00.png", ...]), ...]`."""
    folder = repo / "validation"
    if not folder.is_dir():
        return []
    epochs = []
    for epoch in sorted(path for path in folder.iterdir() if path.is_dir()):
        images = sorted(path for path in epoch.iterdir() if path.suffix in IMAGE_TYPES and path.name != "grid.png")
        if images:
            epochs.append((epoch.name, [path.relative_to(repo).as_posix() for path in images]))
    return epochs


def checkpoints(repo: Path) -> list[tuple[str, bool]]:
    """The checkpoints of a repo, oldest first: `(name, complete)`; an incomplete one was cut short and is not resumed from."""
    folder = repo / "checkpoints"
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob("checkpoint-*") if path.is_dir() and path.name.split("-")[-1].isdigit()]
    return [(path.name, (path / "complete.json").is_file()) for path in sorted(found, key=lambda p: int(p.name.split("-")[-1]))]


def repo_file(repo: Path, relative: str) -> Optional[Path]:
    """The image `relative` inside `repo`, or None if it is not an image file there (or would lead outside it)."""
    root = repo.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path.suffix.lower() not in IMAGE_TYPES or not path.is_file():
        return None
    return path
