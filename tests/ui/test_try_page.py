"""The Try page (`tinypipe/ui/try_page.py`): a finished job's repo generates from typed prompts, and two repos are
compared with the same prompt and seed, side by side."""

import html
import re

import pytest

pytest.importorskip("fastapi", reason="the ui extra is not installed (pip install -e '.[ui]'): the web UI's tests are skipped")


def test_two_repos_get_the_same_prompt_and_seed_side_by_side(client, trained_job):
    page = client.get("/try").text
    assert f'value="{trained_job.id}"' in page  # the finished job is offered
    answer = client.post("/try", data={"repo": trained_job.id, "compare_path": str(trained_job.output),
                                       "prompts": "a photo of sks circle\na photo of a square", "num_images": "1",
                                       "steps": "2", "seed": "3"})
    assert answer.status_code == 200
    rows = re.findall(r"<tr><td>(.*?)</td>(.*?)</tr>", answer.text, re.S)
    assert [html.unescape(prompt) for prompt, _ in rows] == ["a photo of sks circle", "a photo of a square"]
    for _, cells in rows:
        first, second = re.findall(r'src="(data:image/png;base64,[^"]+)"', cells)
        assert first == second  # the same repo, prompt and seed: the same image, so the comparison is fair
    assert rows[0][1] != rows[1][1]


def test_a_repo_that_does_not_exist_is_refused_naming_it(client):
    answer = client.post("/try", data={"repo_path": "./no/such/repo", "prompts": "a photo"})
    assert answer.status_code == 400 and "REPO ./no/such/repo does not exist" in answer.text


def test_a_repo_with_its_own_code_is_refused_unless_the_trust_box_is_ticked_and_its_code_never_runs(client, custom_repo):
    repo, sentinel = custom_repo
    answer = client.post("/try", data={"repo_path": str(repo), "prompts": "a photo"})
    assert answer.status_code == 400
    assert "model_code/" in answer.text and "trust_remote_code" in answer.text
    assert not sentinel.exists()
