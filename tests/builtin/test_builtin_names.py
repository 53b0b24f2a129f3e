"""tinypipe.builtin: one table of built-in names, read by every check and message; each model name loads as a repo."""

import pytest

from tinypipe.builtin import (BUILTIN_NAMES, SHAPES_DATA, TINY_CHATS, TINY_FLUX, TINY_FLUX_SCHNELL, TINY_INSTRUCTIONS, TINY_LLAMA,
                              TINY_LLAMA_CHAT, TINY_SD, TINY_SD3, TINY_SDXL, builtin_names, is_builtin)


def test_each_kind_lists_its_names():
    assert builtin_names("diffusion") == sorted([TINY_SD, TINY_SDXL, TINY_FLUX, TINY_FLUX_SCHNELL, TINY_SD3])
    assert builtin_names("causal-lm") == [TINY_LLAMA, TINY_LLAMA_CHAT]
    assert builtin_names("images") == [SHAPES_DATA]
    assert builtin_names("instructions") == [TINY_CHATS, TINY_INSTRUCTIONS]
    assert sorted(BUILTIN_NAMES) == sorted(builtin_names("diffusion") + builtin_names("causal-lm") + builtin_names("images")
                                           + builtin_names("instructions"))


@pytest.mark.parametrize("name, kind, expected", [
    (TINY_SD, None, True), (TINY_SD, "diffusion", True), (TINY_SD, "causal-lm", False),
    ("tinypipe/tiny-sdd", None, False), ("me/model", "diffusion", False), (None, None, False),
])
def test_is_builtin_checks_the_table(name, kind, expected):
    assert is_builtin(name, kind) is expected


def test_the_model_pipelines_register_a_repo_writer_for_every_builtin_model_name():
    import tinypipe.models  # noqa: F401  (registers how each built-in model is saved as a repo)
    from tinypipe.config.hub import builtin_repo_writer

    for name in builtin_names("diffusion") + builtin_names("causal-lm"):
        assert builtin_repo_writer(name).__module__.startswith("tinypipe.models."), name


def test_auto_model_pipeline_loads_a_builtin_name_before_the_pipelines_are_imported(tmp_path, new_home):
    import os
    import subprocess
    import sys

    script = ("import sys\nfrom tinypipe import AutoModelPipeline\nassert 'tinypipe.models' not in sys.modules\n"
              f"print(type(AutoModelPipeline.from_pretrained({str(tmp_path / 'cache')!r}, {TINY_LLAMA!r})).__name__)")
    environment = {**os.environ, "TINYPIPE_HOME": str(new_home()), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "CausalLMPipeline"
