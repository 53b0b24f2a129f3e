"""`tinypipe ui` (`tinypipe/cli_ui.py`): refused, saying what to do, without the ui extra or when other machines could
reach it without a token. (The served UI itself: tests/ui/.)"""

import sys

import pytest

from tinypipe.cli import main


def test_ui_without_the_ui_extra_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    assert main(["ui"]) == 2
    assert capsys.readouterr().err.strip() == ('tinypipe: error: `tinypipe ui` needs the ui extra, and uvicorn is not '
                                               'installed: pip install "tinypipe[ui]"')


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_ui_on_an_address_other_machines_reach_needs_auth(capsys, host):
    pytest.importorskip("fastapi", reason="the ui extra is not installed: `tinypipe ui`'s host check is skipped")
    assert main(["ui", "--host", host]) == 2
    assert f"--host {host} lets other machines reach the UI, so it needs an access token: add --auth" in capsys.readouterr().err
