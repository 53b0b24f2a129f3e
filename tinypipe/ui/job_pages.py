"""The jobs list and a job's page, with what they read live (the rows, the log, the loss curve) and serve (images).

Jobs are named in addresses as the CLI names them (`JobStore.find`: an id, a unique id prefix, or a unique name).
Reading never changes a job; the actions (cancel, resume, delete, download, export, push, derive) are in
`job_actions.py`.
"""

import json
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, JSONResponse, Response

from ..jobs import STATUSES, JobStore
from .pages import render
from .views import IMAGE_TYPES, checkpoints, job_summary, repo_file, validation_images

__all__ = ["router", "job_page"]

router = APIRouter()
_LOG_CHUNK = 256 * 1024  # the most of a log one poll returns


def _rows(status: str) -> list:
    jobs = JobStore().recent(1000)
    return [job_summary(job) for job in jobs if not status or job.status == status]


@router.get("/")
def jobs_page(request: Request, status: str = "") -> Response:
    status = status if status in STATUSES else ""
    return render(request, "jobs.html", jobs=_rows(status), status=status, statuses=STATUSES)


@router.get("/jobs/rows")
def jobs_rows(request: Request, status: str = "") -> Response:
    """The rows of the jobs list alone: the page fetches them every two seconds."""
    return render(request, "job_rows.html", jobs=_rows(status if status in STATUSES else ""))


def job_page(request: Request, reference: str, *, notice: str = "", error: str = "", status_code: int = 200) -> Response:
    """A job's page, with a notice (what an action did) or an error (why it was refused)."""
    job = JobStore().find(reference)
    repo = job.output
    return render(request, "job.html", status_code=status_code, job=job, summary=job_summary(job),
                  arguments=json.dumps(job.arguments, indent=2, sort_keys=True), epochs=validation_images(repo),
                  before_after=(repo / "validation" / "before_after.png").is_file(), checkpoints=checkpoints(repo),
                  has_loss=(repo / "metrics.jsonl").is_file() or (repo / "trainer" / "loss.png").is_file(),
                  has_lora=_has_lora(repo), notice=notice, error=error)


def _has_lora(repo: Path) -> bool:
    return (repo / "model" / "pytorch_lora_weights.safetensors").is_file()


@router.get("/jobs/{reference}")
def show_job(request: Request, reference: str) -> Response:
    return job_page(request, reference)


@router.get("/jobs/{reference}/log")
def job_log(reference: str, offset: int = 0) -> Response:
    """The log from byte `offset` on (at most 256 KiB), the new offset, and the job's status and progress."""
    job = JobStore().find(reference)
    try:
        with open(job.log_file, "rb") as log:
            log.seek(max(0, offset))
            data = log.read(_LOG_CHUNK)
    except FileNotFoundError:
        data = b""
    summary = job_summary(job)
    return JSONResponse({"text": data.decode("utf-8", "replace"), "offset": max(0, offset) + len(data),
                         "status": job.status, "active": summary.active, "progress": summary.progress,
                         "percent": summary.percent, "eta": summary.eta, "duration": summary.duration})


@router.get("/jobs/{reference}/loss.png")
def job_loss(reference: str) -> Response:
    """The loss curve: the repo's `trainer/loss.png` once written, before that drawn from the live `metrics.jsonl`."""
    from ..training.loss_plot import draw_loss_curve
    from ..training.tracking import read_metrics

    job = JobStore().find(reference)
    saved = job.output / "trainer" / "loss.png"
    if saved.is_file() and job.status == "succeeded":
        return FileResponse(saved, media_type="image/png", headers={"Cache-Control": "no-store"})
    records = read_metrics(job.output / "metrics.jsonl")
    if not records:
        return Response("no loss recorded yet", 404, media_type="text/plain")
    with tempfile.TemporaryDirectory() as folder:
        data = draw_loss_curve(records, Path(folder) / "loss.png", title=f"Training loss of {job.name}").read_bytes()
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/jobs/{reference}/files/{relative:path}")
def job_file(reference: str, relative: str) -> Response:
    """An image of the job's repo (validation images, the before/after grid); nothing outside the repo, nothing else."""
    job = JobStore().find(reference)
    path = repo_file(job.output, relative)
    if path is None:
        return Response(f"{relative} is not an image of job {job.id}'s repo", 404, media_type="text/plain")
    return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()])
