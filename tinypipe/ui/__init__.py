"""The local web UI, `tinypipe ui`: start, watch, compare and fetch fine-tunes in a browser.

Pages: the jobs list (refreshed live), a job's page (arguments, the log as it grows, the loss curve, validation
images, checkpoints, and buttons to download, export, push and derive), a New-job form checked exactly as the
command line checks it, and a Try page to generate with one or two results side by side.

Built with FastAPI and Jinja2 templates, served by uvicorn: the optional extra `pip install "tinypipe[ui]"`.
`tinypipe/cli_ui.py` starts it; `create_app` builds it (for tests, or another ASGI server).
"""

from .app import create_app

__all__ = ["create_app"]
