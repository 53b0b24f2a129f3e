"""The `tinypipe ui` command: the local web page of the jobs (`tinypipe/ui/`), served by uvicorn.

```
tinypipe ui                                  # http://127.0.0.1:7860/, this machine only
tinypipe ui --host 0.0.0.0 --auth            # reachable from other machines: prints a link with a new token
tinypipe ui --host 0.0.0.0 --auth TOKEN      # ... with a token of your own
```

The UI is the optional extra `pip install "tinypipe[ui]"`; without it the command says so and exits 2. Registered
from `tinypipe.cli.build_parser` with `add_ui_commands(commands)`.
"""

import argparse
import socket
import threading
from typing import Callable

__all__ = ["add_ui_commands", "check_ui_extra"]

_UI_PACKAGES = ("fastapi", "starlette", "jinja2", "uvicorn", "python_multipart")


def check_ui_extra() -> None:
    """Refuse to start the UI when the ui extra is not installed, naming the install command.

    Raises:
        ConfigError: A package of the ui extra is missing.
    """
    import importlib

    from .errors import ConfigError

    for package in _UI_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:
            raise ConfigError(f"`tinypipe ui` needs the ui extra, and {package} is not installed: "
                              "pip install \"tinypipe[ui]\"") from None


def _address(host: str, port: int) -> str:
    """`http://host:port/`, with an IPv6 address in brackets."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def _ui(arguments: argparse.Namespace) -> int:
    from .errors import ConfigError

    check_ui_extra()
    import uvicorn

    from .ui import create_app
    from .ui.security import is_local_host, new_token

    local = is_local_host(arguments.host)
    if not local and arguments.auth is None:
        raise ConfigError(f"--host {arguments.host} lets other machines reach the UI, so it needs an access token: add "
                          "--auth (a new token is printed) or --auth TOKEN.")
    token = None if arguments.auth is None else (arguments.auth or new_token())
    app = create_app(arguments.command_line, token, local_only=local)
    every_interface = arguments.host in ("0.0.0.0", "::")
    query = f"?token={token}" if token else ""
    print(f"tinypipe UI on {_address('127.0.0.1' if every_interface else arguments.host, arguments.port)}{query}", flush=True)
    if every_interface:  # the loopback link above works only here; others need this machine's name
        print(f"From other machines: {_address(socket.getfqdn(), arguments.port)}{query}", flush=True)
    print("Stop it with Ctrl+C; jobs started from it keep running.", flush=True)
    from .ui.new_job import warm_up

    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()  # the New-job form's imports, meanwhile
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning")
    return 0


def add_ui_commands(commands: "argparse._SubParsersAction", command_line: Callable[[], argparse.ArgumentParser]) -> None:
    """Add `tinypipe ui` to the sub-commands of the `tinypipe` parser.

    Args:
        commands: The parser's sub-commands.
        command_line: `cli.build_parser`: the New-job form checks its command line with the CLI's own parser.
    """
    ui = commands.add_parser(
        "ui", help="A local web page to start, watch, compare and fetch jobs (pip install \"tinypipe[ui]\").",
        description="Serve the web UI: the jobs (live), each job's log, loss curve, images and files, a form to start "
                    "new jobs (checked as the command line checks them) and a page to try results. It answers this "
                    "machine only (127.0.0.1) unless --host says otherwise, and then only with --auth.")
    ui.add_argument("--host", default="127.0.0.1",
                    help="The address to listen on (default: 127.0.0.1, this machine only). Any other needs --auth.")
    ui.add_argument("--port", type=int, default=7860, help="The port (default: 7860).")
    ui.add_argument("--auth", nargs="?", const="", metavar="TOKEN",
                    help="Require an access token on every request: TOKEN, or a new one printed at start when TOKEN "
                         "is left out. Open the printed link once; the browser then keeps the token in a cookie.")
    ui.set_defaults(handler=_ui, command_line=command_line)
