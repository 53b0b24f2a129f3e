"""The Try page: generate with a finished job's repo (or any repo folder or Hub id), and compare two side by side.

Diffusion repos get prompts (one per line) and return images, each repo with the same seed, so two jobs are compared
on equal terms; causal-LM repos get a chat (or an instruction, for a tokenizer without a chat template). A repo is
loaded as `tinypipe generate` loads it (`cli_repos.load_pipeline`), so its own code runs only when the page's
"trust remote code" box is ticked. The last two repos loaded stay in memory for the next try.
"""

import argparse
import base64
import io
import json
import threading
from collections import OrderedDict
from typing import Any, Optional

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..errors import ConfigError, TinypipeError
from ..jobs import JobStore
from .pages import render

__all__ = ["router", "PipelineCache"]

router = APIRouter()


class PipelineCache:
    """The most recently used pipelines, loaded as `tinypipe generate` loads them; one generation at a time."""

    def __init__(self, size: int = 2):
        self.size = size
        self.loaded: "OrderedDict[tuple[str, bool], Any]" = OrderedDict()
        self.lock = threading.Lock()  # one model runs at a time: the machine's cores are the jobs' too

    def get(self, repo: str, trust_remote_code: bool) -> Any:
        from ..cli_repos import load_pipeline, repo_path

        key = (repo, trust_remote_code)
        if key not in self.loaded:
            arguments = argparse.Namespace(repo=repo, revision=None, cache_dir=None, trust_remote_code=trust_remote_code)
            self.loaded[key] = load_pipeline(arguments, repo_path(repo))
            while len(self.loaded) > self.size:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(key)
        return self.loaded[key]


_cache = PipelineCache()


def _png(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _positive(form: dict, name: str, default: int) -> int:
    text = form.get(name, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}.") from None
    if value < (0 if name == "seed" else 1):
        raise ConfigError(f"{name} must be {'0' if name == 'seed' else '1'} or more, got {value}.")
    return value


def _number(form: dict, name: str) -> Optional[float]:
    text = form.get(name, "").strip()
    try:
        return float(text) if text else None
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}.") from None


def _try_repo(pipeline: Any, form: dict, conversation: list) -> dict:
    """One repo's answer: `{"images": [[data URI, ...] per prompt]}` or `{"reply": text}`."""
    from ..models import CausalLMPipeline

    seed = _positive(form, "seed", 0)
    if isinstance(pipeline, CausalLMPipeline):
        message = form.get("message", "").strip()
        if not message:
            raise ConfigError("Type a message for the causal LM.")
        tokens = _positive(form, "max_new_tokens", 64)
        if getattr(pipeline.tokenizer, "chat_template", None):
            system = form.get("system", "").strip()
            messages = ([{"role": "system", "content": system}] if system else []) + conversation
            reply = pipeline.generate(messages=messages + [{"role": "user", "content": message}], max_new_tokens=tokens, seed=seed)
        else:  # no chat template: the message is an instruction, as `tinypipe generate REPO PROMPT` answers it
            reply = pipeline.generate(instruction=message, max_new_tokens=tokens, seed=seed)
        return {"reply": reply}
    prompts = [line.strip() for line in form.get("prompts", "").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("Type at least one prompt (one per line).")
    count = _positive(form, "num_images", 2)
    images = pipeline.generate(prompts, num_inference_steps=_positive(form, "steps", 25), seed=seed,
                               guidance_scale=_number(form, "guidance_scale"),
                               negative_prompt=form.get("negative_prompt", "").strip() or None, num_images_per_prompt=count)
    return {"images": [[_png(image) for image in images[index * count:(index + 1) * count]] for index in range(len(prompts))],
            "prompts": prompts}


def _conversation(form: dict) -> list:
    """The chat so far (the page keeps it in a hidden field): a list of `{"role", "content"}` messages."""
    try:
        turns = json.loads(form.get("conversation") or "[]")
    except json.JSONDecodeError:
        turns = None
    if not isinstance(turns, list) or not all(isinstance(turn, dict) and set(turn) == {"role", "content"} for turn in turns):
        raise ConfigError("The chat history of the page is damaged; reload the Try page to start a new chat.")
    return turns


def _page(request: Request, form: dict, results: list, error: str = "", status_code: int = 200) -> Response:
    finished = [job for job in JobStore().recent(1000) if job.status == "succeeded"]
    try:
        turns = _conversation(form)
    except ConfigError:
        turns = []
    return render(request, "try.html", status_code=status_code, jobs=finished, form=form, results=results, error=error,
                  turns=turns)


@router.get("/try")
def try_page(request: Request, repo: str = "") -> Response:
    return _page(request, {"repo": repo, "seed": "0", "steps": "25", "num_images": "2"}, [])


@router.post("/try")
async def try_repos(request: Request) -> Response:
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    repos = [value for value in (form.get("repo_path", "").strip() or form.get("repo", "").strip(),
                                 form.get("compare_path", "").strip() or form.get("compare", "").strip()) if value]
    trust = form.get("trust_remote_code") == "on"
    results = []
    try:
        if not repos:
            raise ConfigError("Choose a finished job, or type a repo folder or Hub id.")
        conversation = _conversation(form)
        with _cache.lock:
            for repo in repos:
                results.append({"repo": repo, **_try_repo(_cache.get(repo, trust), form, conversation)})
    except TinypipeError as error:
        return _page(request, form, results, f"tinypipe: error: {error}", 400)
    if results and "reply" in results[0]:  # the chat goes on with the first repo's reply
        message = form.get("message", "").strip()
        form["conversation"] = json.dumps(conversation + [{"role": "user", "content": message},
                                                          {"role": "assistant", "content": results[0]["reply"]}])
        form["message"] = ""
    return _page(request, form, results)
