"""What a command imports: a job loads the libraries of its own kind of model only, on first use of a name.

A diffusion job must not pay for the causal-LM stack (transformers' Llama, chat templates), nor a causal-LM job for
diffusers: the `tinypipe.trainers` and `tinypipe.models` packages import each name's module when it is first used,
and the base-model check every job runs first imports no library.
"""

import os
import subprocess
import sys

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")


def _libraries_loaded_by(statement: str) -> str:
    script = f"import sys\n{statement}\nprint(sorted(name for name in {LIBRARIES!r} if name in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_trainer_and_model_packages_load_no_library_until_a_name_is_used():
    assert _libraries_loaded_by("import tinypipe.trainers, tinypipe.models") == "[]"


def test_the_base_model_check_of_every_job_loads_no_library():
    assert _libraries_loaded_by("from tinypipe.models.base_models import check_base_model") == "[]"


def test_a_mistyped_builtin_model_name_is_refused_before_the_trainers_libraries_load():
    statement = ("from tinypipe.errors import ConfigError\nfrom tinypipe.cli import build_parser\n"
                 "from tinypipe.cli_arguments import train_request\n"
                 "arguments = build_parser().parse_args(['train-diffuser', 'typo', 'tinypipe/tiny-sdx', 'tinypipe/shapes', 'p'])\n"
                 "try:\n    train_request(arguments)\nexcept ConfigError as error:\n"
                 "    assert \"Did you mean 'tinypipe/tiny-sdxl'\" in str(error), error\nelse:\n    raise AssertionError('accepted')")
    assert _libraries_loaded_by(statement) == "[]"


def test_a_causal_lm_job_never_imports_diffusers(tmp_path):
    statement = ("from tinypipe.builtin.tiny_llama import TINY_INSTRUCTIONS, TINY_LLAMA\n"
                 "from tinypipe.trainers import CausalLMTrainer\n"
                 f"CausalLMTrainer().train(base_model=TINY_LLAMA, data=TINY_INSTRUCTIONS, max_train_steps=2, "
                 f"output_dir={str(tmp_path / 'out')!r})")
    assert _libraries_loaded_by(statement) == "['accelerate', 'peft', 'torch', 'transformers']"
