"""The causal-LM commands: `tinypipe generate REPO --chat` / `--message`, and `tinypipe merge REPO OUT`."""

import io

import pytest
import torch
from transformers import AutoModelForCausalLM

from tinypipe.builtin.tiny_llama import TINY_LLAMA, TINY_LLAMA_CHAT
from tinypipe.cli import main
from tinypipe.models import CausalLMPipeline


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the command in this process; returns (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def chat_repo(tmp_path_factory):
    """A tiny-llama-chat pipeline with a LoRA that changes its output, saved as a repo, and the pipeline."""
    pipeline = CausalLMPipeline(TINY_LLAMA_CHAT, lora_rank=2)
    with torch.no_grad():
        for name, parameter in pipeline.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    return pipeline.save_pretrained(tmp_path_factory.mktemp("cli_lm") / "repo"), pipeline


def test_generate_message_answers_one_turn_with_the_chat_template(chat_repo, capsys):
    repo, pipeline = chat_repo
    code, out, err = run(capsys, "generate", str(repo), "--message", "What is the capital of France?", "--system", "Be brief.",
                         "--max-new-tokens", "6")
    expected = pipeline.generate(messages=[{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "What is the capital of France?"}], max_new_tokens=6)
    assert (code, out, err) == (0, expected + "\n", "")


def test_generate_chat_keeps_the_conversation_until_an_empty_line(chat_repo, capsys, monkeypatch):
    repo, pipeline = chat_repo
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello!\nAnd of Italy?\n\nnever read\n"))
    code, out, _ = run(capsys, "generate", str(repo), "What is the capital of France?", "--chat", "--max-new-tokens", "5")
    messages, replies = [], []
    for text in ("What is the capital of France?", "Hello!", "And of Italy?"):  # PROMPT is the first message
        messages.append({"role": "user", "content": text})
        replies.append(pipeline.generate(messages=messages, max_new_tokens=5))
        messages.append({"role": "assistant", "content": replies[-1]})
    assert code == 0 and out == "".join(reply + "\n" for reply in replies)


def test_generate_chat_ends_at_the_end_of_input(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert run(capsys, "generate", TINY_LLAMA_CHAT, "--chat") == (0, "", "")


def test_chat_with_a_repo_without_chat_template_names_the_fix(capsys):
    code, out, err = run(capsys, "generate", TINY_LLAMA, "--message", "Hi")
    assert code == 2 and out == ""
    assert err.startswith("tinypipe: error: The tokenizer of tinypipe/tiny-llama (base model 'tinypipe/tiny-llama') has no chat "
                          "template") and "Train with a chat template" in err and err.count("\n") == 1


@pytest.mark.parametrize("arguments, message", [
    (["--message", "Hi", "--chat"], "give the text either as --message or as PROMPT with --chat"),
    (["Hi", "--message", "Hi"], "give the text either as --message or as PROMPT with --chat"),
    (["--system", "Be brief."], "--system sets the system message of a chat"),
    (["--chat", "--raw"], "--raw continues PROMPT as plain text"),
    ([], "generate needs a PROMPT"),
])
def test_chat_options_that_cannot_work_are_refused_before_loading(capsys, arguments, message):
    code, _, err = run(capsys, "generate", "no/such-repo", *arguments)
    assert code == 2 and message in err


def test_merge_writes_a_folder_transformers_loads_with_the_same_logits(chat_repo, capsys, tmp_path):
    repo, pipeline = chat_repo
    code, out, err = run(capsys, "merge", str(repo), str(tmp_path / "merged"), "--dtype", "float32")
    assert code == 0 and out.startswith(f"Wrote {tmp_path / 'merged'}") and err == ""
    batch = pipeline.tokenizer(["Hello there"], return_tensors="pt")
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(**batch).logits
        assert torch.allclose(merged, pipeline.model(**batch).logits, atol=1e-4)


def test_merge_refuses_an_output_holding_the_users_files(chat_repo, capsys, tmp_path):
    repo, _ = chat_repo
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_text("my own")
    code, _, err = run(capsys, "merge", str(repo), str(tmp_path / "out"))
    assert code == 2 and "holds files that tinypipe merge did not write" in err
    assert (tmp_path / "out" / "model.safetensors").read_text() == "my own"
    assert run(capsys, "merge", str(repo), str(tmp_path / "x"), "--dtype", "int8")[0] == 2  # argparse's choices
