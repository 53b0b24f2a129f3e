"""The buttons of the jobs list and of a job's page: each calls the function its CLI command calls.

| button             | the CLI command     | function                                          |
| ------------------ | ------------------- | ------------------------------------------------- |
| Cancel             | `tinypipe cancel`   | `runner.cancel_job`                               |
| Resume             | `tinypipe resume`   | `cli_jobs.resume_job` (the same job continues)    |
| Delete             | `tinypipe rm`       | `cli_jobs.remove_job` (the repo stays unless asked) |
| Download zip       | `download-model`    | `archive.job_zip_members`, `archive.write_zip`    |
| Export             | `tinypipe export`   | `export.export_lora`                              |
| Push to the Hub    | `tinypipe push`     | `publish.push_repo_folder`                        |
| Derive             | `tinypipe derive`   | `derive.derive_pipeline`                          |

A refused action shows the same message as its command, on the job's page. The Hub token typed into the push form
is handed to `push_repo_folder` and nothing else: it is never written anywhere or shown again.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, RedirectResponse, Response

from ..errors import ConfigError, TinypipeError
from ..jobs import JobStore
from .job_pages import job_page

__all__ = ["router"]

router = APIRouter()


def _back(form, default: str) -> str:
    """Where to go after an action: the page the form names, if it is a page of this UI."""
    target = form.get("next")
    return target if isinstance(target, str) and target.startswith("/") and not target.startswith("//") else default


def _checkbox(form, name: str) -> bool:
    return form.get(name) in ("on", "true", "1")


@router.post("/jobs/{reference}/cancel")
async def cancel(request: Request, reference: str) -> Response:
    from ..runner import cancel_job

    form = await request.form()
    try:
        job = cancel_job(JobStore(), reference)
    except TinypipeError as error:
        return job_page(request, reference, error=str(error), status_code=409)
    return RedirectResponse(_back(form, f"/jobs/{job.id}"), 303)


@router.post("/jobs/{reference}/resume")
def resume(request: Request, reference: str) -> Response:
    from ..cli_jobs import resume_job

    store = JobStore()
    job = store.find(reference)
    try:
        resume_job(store, job, detach=True)  # the same job continues, in the background
    except TinypipeError as error:
        return job_page(request, reference, error=str(error), status_code=409)
    return RedirectResponse(f"/jobs/{job.id}", 303)


@router.post("/jobs/{reference}/delete")
async def delete(request: Request, reference: str) -> Response:
    from ..cli_jobs import remove_job

    form = await request.form()
    store = JobStore()
    job = store.find(reference)
    try:
        remove_job(store, job, delete_output=_checkbox(form, "delete_output"))
    except TinypipeError as error:
        return job_page(request, reference, error=str(error), status_code=409)
    return RedirectResponse("/", 303)


def _send_file(path: Path, folder: str, name: str, media_type: str) -> FileResponse:
    """Send a file made in the temporary `folder`, and remove the folder once it is sent."""
    return FileResponse(path, media_type=media_type, filename=name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


@router.get("/jobs/{reference}/download")
def download(request: Request, reference: str) -> Response:
    """The zip `tinypipe download-model` writes: the job's model/ folder and its validation images."""
    from ..archive import job_zip_members, job_zip_name, write_zip

    job = JobStore().find(reference)
    try:
        members = job_zip_members(job)
    except TinypipeError as error:
        return job_page(request, reference, error=str(error), status_code=409)
    folder = tempfile.mkdtemp(prefix="tinypipe-ui-")
    name = job_zip_name(job)
    return _send_file(write_zip(members, Path(folder) / name), folder, name, "application/zip")


@router.post("/jobs/{reference}/export")
async def export(request: Request, reference: str) -> Response:
    """The job's LoRA as one file for kohya / A1111 / ComfyUI (`tinypipe export --format ...`)."""
    from ..archive import job_zip_name
    from ..export import export_lora

    form = await request.form()
    job = JobStore().find(reference)
    format = str(form.get("format", "kohya"))
    folder = tempfile.mkdtemp(prefix="tinypipe-ui-")
    name = f"{job_zip_name(job)[:-len('.zip')]}-{format}.safetensors"
    try:
        path = export_lora(job.output, format, Path(folder) / name)
    except TinypipeError as error:
        shutil.rmtree(folder, ignore_errors=True)
        return job_page(request, reference, error=str(error), status_code=409)
    return _send_file(path, folder, name, "application/octet-stream")


@router.post("/jobs/{reference}/push")
async def push(request: Request, reference: str) -> Response:
    """Publish the job's repo to the Hub (`tinypipe push`); the token comes from the form or, if empty, the environment."""
    from ..publish import push_repo_folder

    form = await request.form()
    job = JobStore().find(reference)
    token: Optional[str] = str(form.get("token", "")).strip() or None
    hub_id = str(form.get("hub_id", "")).strip()
    try:
        if not hub_id:
            raise ConfigError("Give the Hub repo to publish to, e.g. me/my-lora.")
        url = push_repo_folder(job.output, hub_id, private=_checkbox(form, "private") or None, token=token,
                               lora_at_root=_checkbox(form, "lora_at_root"))
    except Exception as error:  # noqa: BLE001 - any failure is shown, with the token blanked out of its text
        text = str(error) if isinstance(error, TinypipeError) else f"Publishing failed: {type(error).__name__}: {error}"
        return job_page(request, reference, error=text.replace(token, "***") if token else text, status_code=409)
    return job_page(request, reference, notice=f"Pushed {job.output} to {url}")


@router.post("/jobs/{reference}/derive")
async def derive(request: Request, reference: str) -> Response:
    """A new repo: the job's repo with its LoRA, embedding or adapter replaced (`tinypipe derive`)."""
    from ..derive import derive_pipeline

    form = await request.form()
    job = JobStore().find(reference)
    kind, path = str(form.get("replace", "lora")), str(form.get("path", "")).strip()
    output = str(form.get("output", "")).strip()
    try:
        if kind not in ("lora", "embedding", "adapter") or not path or not output:
            raise ConfigError("Derive needs the new repo's folder and the replacement: a LoRA, an embedding or an adapter "
                              "(a file, a folder or a repo holding it).")
        written = derive_pipeline(job.output, Path(output), **{kind: path},
                                  placeholder_token=str(form.get("placeholder_token", "")).strip() or None,
                                  trust_remote_code=_checkbox(form, "trust_remote_code"),
                                  allow_other_base=_checkbox(form, "allow_other_base"))
    except TinypipeError as error:
        return job_page(request, reference, error=str(error), status_code=409)
    return job_page(request, reference, notice=f"Wrote {written}: {job.output} with its {kind} replaced; "
                                               f"{job.output} is unchanged.")
