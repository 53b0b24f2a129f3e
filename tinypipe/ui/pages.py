"""The web UI's HTML: the Jinja2 templates shipped in `tinypipe/ui/templates/` and the one function that renders them.

Jinja2 escapes every value put into a page, so a job name, a log line or an error message is shown as text, never
run as HTML or script.
"""

from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..version import __version__

__all__ = ["render", "TEMPLATES", "STATIC"]

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
_templates = Jinja2Templates(directory=str(TEMPLATES))


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The page `name` (a template file) with `context`, and the version in its footer."""
    return _templates.TemplateResponse(request, name, {"version": __version__, **context}, status_code=status_code)
