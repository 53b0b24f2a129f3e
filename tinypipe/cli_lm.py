"""The causal-LM parts of the `tinypipe` command line: chatting with a repo, and merging its LoRA.

```
tinypipe generate REPO --chat                  # a multi-turn chat on stdin/stdout; an empty line or EOF ends it
tinypipe generate REPO --message "Hi!"         # one turn, non-interactive
tinypipe merge REPO OUT [--dtype bfloat16]     # a plain transformers folder with the LoRA merged in
```

`cli.build_parser` registers these with `add_chat_options(generate)` and `add_lm_commands(commands)`. Like the rest
of the command line, this module imports nothing heavy until a command runs.
"""

import argparse
import sys
from typing import Any

__all__ = ["add_chat_options", "add_lm_commands", "check_chat_arguments", "chat"]


def add_chat_options(generate: argparse.ArgumentParser) -> None:
    """Add `--chat`, `--message` and `--system` to the `generate` command."""
    generate.add_argument("--chat", action="store_true",
                          help="Causal LM: chat on stdin/stdout, rendered with the repo's chat template (PROMPT, if given, "
                               "is the first message); an empty line or end of input ends the chat.")
    generate.add_argument("--message", metavar="TEXT",
                          help="Causal LM: one user message, answered with the repo's chat template (non-interactive).")
    generate.add_argument("--system", metavar="TEXT", help="With --chat or --message: a system message put first.")


def check_chat_arguments(arguments: argparse.Namespace) -> None:
    """Refuse combinations of PROMPT, `--chat`, `--message` and `--system` that cannot work, before loading anything.

    Raises:
        ConfigError: Naming the options and the fix.
    """
    from .errors import ConfigError

    chatting = arguments.chat or arguments.message is not None
    if arguments.message is not None and (arguments.prompt is not None or arguments.chat):
        raise ConfigError("--message is a single chat turn; give the text either as --message or as PROMPT with --chat, not both.")
    if arguments.system is not None and not chatting:
        raise ConfigError("--system sets the system message of a chat; use it with --chat or --message.")
    if chatting and arguments.raw:
        raise ConfigError("--raw continues PROMPT as plain text, and --chat/--message render a conversation; choose one.")
    if arguments.prompt is None and not chatting:
        raise ConfigError("generate needs a PROMPT (or, for a causal LM with a chat template, --chat or --message TEXT).")


def _reply(pipeline: Any, messages: list, arguments: argparse.Namespace) -> str:
    return pipeline.generate(messages=messages, max_new_tokens=arguments.max_new_tokens, seed=arguments.seed)


def chat(pipeline: Any, arguments: argparse.Namespace) -> int:
    """Run `generate --chat` / `--message`: each user message in, the assistant's reply out (one block per reply).

    In a chat the user's lines are read from stdin, one message per line; an empty line or end of input ends the
    chat. Each reply is printed to stdout; the `you>` prompt goes to stderr, and only when stdin is a terminal.

    Returns:
        0.

    Raises:
        ConfigError: The repo is not a causal LM, or its tokenizer has no chat template (naming the fix).
    """
    from .errors import ConfigError
    from .models import CausalLMPipeline
    from .models.chat import require_chat_template

    if not isinstance(pipeline, CausalLMPipeline):
        raise ConfigError(f"--chat and --message are for causal-LM repos; {arguments.repo} holds a {type(pipeline).__name__}.")
    require_chat_template(pipeline.tokenizer, f"{arguments.repo} (base model {pipeline.config['base_model']!r})")
    messages = [{"role": "system", "content": arguments.system}] if arguments.system is not None else []
    if arguments.message is not None:
        print(_reply(pipeline, messages + [{"role": "user", "content": arguments.message}], arguments))
        return 0
    interactive = sys.stdin.isatty()
    first = arguments.prompt
    while True:
        if first is not None:
            text, first = first, None
        else:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            text = line.rstrip("\r\n")
            if not text:  # an empty line, or the end of input
                return 0
        messages.append({"role": "user", "content": text})
        reply = _reply(pipeline, messages, arguments)
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)


def _merge(arguments: argparse.Namespace) -> int:
    from pathlib import Path

    from .cli_repos import load_pipeline, repo_path
    from .models.merge import merge_repo
    from .models.merged_model import check_merge_output

    output, local = Path(arguments.output), repo_path(arguments.repo)
    check_merge_output(output, local)  # before a hub repo is downloaded or a model loaded
    merge_repo(local if local is not None else load_pipeline(arguments, None), output, arguments.dtype,
               trust_remote_code=arguments.trust_remote_code)
    print(f"Wrote {output}: the merged model, loadable with transformers' AutoModelForCausalLM.from_pretrained({str(output)!r}).")
    return 0


def add_lm_commands(commands: Any) -> None:
    """Add the `merge` command to the `tinypipe` sub-command parsers."""
    merge = commands.add_parser(
        "merge", help="Merge a causal-LM repo's LoRA into its base model, as a plain transformers folder.",
        description="Merge the LoRA of a causal-LM repo (a folder, a job's id or name, or a Hub id) into its base model and write "
                    "OUT: safetensors weights, config, generation config and tokenizer files with the chat template, "
                    "loadable with AutoModelForCausalLM.from_pretrained(OUT) without peft. OUT must be new or empty, or an "
                    "earlier merge's unchanged output (then replaced).")
    merge.add_argument("repo", metavar="REPO", help="A causal-LM repo folder, a job (its id or name), or a Hub id.")
    merge.add_argument("output", metavar="OUT", help="The folder to write the merged model into.")
    merge.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                       help="dtype of the merged weights (default: the dtype the repo's model runs in).")
    merge.add_argument("--revision", help="Hub revision, for a Hub id.")
    merge.add_argument("--cache-dir", metavar="DIR", help="Where Hub repos are downloaded (default: the tinypipe home's hub/).")
    merge.add_argument("--trust-remote-code", action="store_true", help="Allow the repo's own code (model_code/) to run.")
    merge.set_defaults(handler=_merge)
