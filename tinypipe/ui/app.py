"""The web UI's application: its pages, its static files, and the access checks in front of all of them.

```python
from tinypipe.ui import create_app

from tinypipe.cli import build_parser

app = create_app(build_parser)                                   # what `tinypipe ui` serves on 127.0.0.1:7860
app = create_app(build_parser, token="s3cret", local_only=False)  # `tinypipe ui --host 0.0.0.0 --auth s3cret`
```
"""

import argparse
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from ..errors import TinypipeError
from ..jobs import JobError
from ..version import __version__
from . import job_actions, job_pages, new_job, try_page
from .pages import STATIC, render
from .security import AccessPolicy

__all__ = ["create_app"]


def create_app(command_line: Callable[[], argparse.ArgumentParser], token: Optional[str] = None, *,
               local_only: bool = True) -> FastAPI:
    """The web UI as an ASGI application (FastAPI), serving the job store of the tinypipe home (`TINYPIPE_HOME`).

    Args:
        command_line: `tinypipe.cli.build_parser`: the New-job form checks the command line it stands for with it.
        token: The access token every request must carry (`--auth`); None: none (a UI bound to this machine only).
        local_only: Answer only requests addressed to 127.0.0.1 / localhost (the UI is bound to this machine).

    Returns:
        The application, for uvicorn or Starlette's `TestClient`.

    Raises:
        ValueError: `local_only=False` without a token: a UI reachable from other machines always needs one.
    """
    if not local_only and token is None:
        raise ValueError("A UI reachable from other machines needs an access token.")
    policy = AccessPolicy(token=token, local_only=local_only)
    app = FastAPI(title="tinypipe", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.command_line = command_line

    @app.middleware("http")
    async def check_access(request: Request, call_next) -> Response:
        refusal = policy.refusal(request)
        return refusal if refusal is not None else await call_next(request)

    @app.exception_handler(TinypipeError)
    async def tinypipe_error(request: Request, error: TinypipeError) -> Response:
        return render(request, "error.html", status_code=404 if isinstance(error, JobError) else 400, error=str(error))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for module in (job_pages, job_actions, new_job, try_page):
        app.include_router(module.router)
    return app
