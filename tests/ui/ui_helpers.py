"""What the web UI's tests share: the client of a UI on this machine, and job records made without training.

Test modules import it after `pytest.importorskip("fastapi")`, so that without the ui extra they are skipped, saying so.
"""

from fastapi.testclient import TestClient

from tinypipe.jobs import JobStore

ADDRESS = "http://127.0.0.1:7860"


def client_for(app) -> TestClient:
    """A client that talks to `app` as a browser on this machine does (its forms name the UI's own origin)."""
    return TestClient(app, base_url=ADDRESS, headers={"Origin": ADDRESS})


def record_job(store: JobStore, name: str, status: str = "succeeded", log: str = "", output=None):
    """A job record that ended as `status` (or is still `running`, in this process), without training anything."""
    job = store.create(name, "train-diffuser", "lora", {"kind": "train-diffuser", "name": name, "method": "lora",
                                                        "model": "tinypipe/tiny-sd", "dataset": "tinypipe/shapes"}, output)
    job.log_file.write_text(log)
    if status != "queued":
        store.start(job.id)
    if status not in ("queued", "running"):
        store.finish(job.id, status, "it broke" if status == "failed" else None)
    return store.get(job.id)
