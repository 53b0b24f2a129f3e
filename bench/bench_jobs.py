"""Benchmark: whole jobs, from the command to the saved output, tinypipe vs the scripts users run instead.

Each run is a separate process timed from launch to exit, interleaved (peer, tinypipe, peer, tinypipe, ...) so that
machine load falls on both sides alike. Same model, images, resolution, batch, steps, seed, constant learning rate,
no validation on either side:

- `lora`: `tinypipe train-diffuser --method lora` vs diffusers' `train_text_to_image_lora.py`;
- `dreambooth`: DreamBooth-LoRA with prior preservation and supplied class images, `tinypipe train-diffuser
  --method lora --prior-class-prompt ...` vs `train_dreambooth_lora.py --with_prior_preservation`;
- `ti`: textual inversion, `tinypipe train-diffuser --method textual-inversion` vs `textual_inversion.py`;
- `lm`: `tinypipe train-lm` (no packing) vs transformers' Trainer + peft (`bench/peers/lm_trainer_peft.py`);
- `sdxl`, `flux`: LoRA on `tinypipe/tiny-sdxl` / `tinypipe/tiny-flux` (32 px) vs `train_dreambooth_lora_sdxl.py` /
  `train_dreambooth_lora_flux.py` (copy them beside the others from the same diffusers clone).

Per run: wall seconds, seconds to the first step, steady seconds per step, seconds after the last step, CPU seconds
(user + system of the process and its children), peak RSS, final loss (all read from the progress bars and the
process's rusage; for `lm`, where the target is the same final loss, the mean loss of the last tenth of the steps on
both sides, from the Trainer's log and tinypipe's `metrics.jsonl`). Then tinypipe / peer ratios: median and min-max over the pairs. For `lm`, tokens/s ratio = the
inverse of the steady seconds-per-step ratio (both sides see the same records, batch and padding).

Set-up (the peers' venv and scripts are kept out of the repo): with a clone of huggingface/diffusers,
    git clone --bare https://github.com/huggingface/diffusers /tmp/diffusers.git
    bash bench/peers/setup.sh /tmp/diffusers.git HEAD /tmp/benchvenv /tmp/diffusers_examples
makes the venv (the project's torch / diffusers / transformers / peft versions, plus torchvision and datasets) and
copies the five example scripts; `--peer-python` and `--examples` point elsewhere.
Usage:
    python bench/bench_jobs.py [--methods lora,dreambooth,ti,lm] [--steps 30,200] [--pairs 3] [--model sd128|tiny]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STEP = re.compile(r"(\d+)/(\d+) \[")
LOSS = re.compile(r"loss[=:] ?'?([0-9][0-9.eE+-]*)")
PROMPT, CLASS_PROMPT = "a photo of sks circle", "a photo of a circle"
FAMILY_SCRIPTS = {"sdxl": "train_dreambooth_lora_sdxl.py", "flux": "train_dreambooth_lora_flux.py"}
"""Per-family LoRA peers (`--methods sdxl,flux`), on the built-in tiny models at their native 32 px."""


@dataclass
class Run:
    """One process's figures."""

    wall: float
    first_step: float = float("nan")
    per_step: float = float("nan")
    after_last: float = float("nan")
    cpu: float = 0.0
    peak_rss_mb: float = 0.0
    loss: float = float("nan")
    lines: list = field(default_factory=list)


def timed_run(command: list[str], steps: int, env: dict) -> Run:
    """Run `command`, timestamp its progress-bar updates, and read its rusage (wait4) when it exits."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    seen: list[tuple[float, str]] = []

    def read() -> None:
        buffer = b""
        while chunk := process.stdout.read1(65536):
            now = time.perf_counter() - start
            buffer += chunk
            *parts, buffer = re.split(rb"[\r\n]", buffer)
            seen.extend((now, part.decode("utf-8", "replace")) for part in parts if part.strip())
        if buffer.strip():
            seen.append((time.perf_counter() - start, buffer.decode("utf-8", "replace")))

    reader = threading.Thread(target=read)
    reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    run = Run(wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_rss_mb=usage.ru_maxrss / 1024,
              lines=[text for _, text in seen])
    if process.returncode != 0:
        tail = "\n".join(run.lines[-25:])
        raise RuntimeError(f"{' '.join(command[:3])}... exited {process.returncode}:\n{tail}")
    marks = [(when, int(match.group(1))) for when, text in seen
             for match in [STEP.search(text)] if match and int(match.group(2)) == steps]
    first = next((when for when, step in marks if step >= 1), None)
    last = next((when for when, step in marks if step == steps), None)
    if first is not None and last is not None:
        run.first_step, run.after_last = first, wall - last
        run.per_step = (last - first) / max(1, steps - 1)
    losses = [float(match.group(1)) for _, text in seen for match in LOSS.finditer(text)]
    run.loss = losses[-1] if losses else float("nan")
    return run


def write_images(folder: Path, shape: str, resolution: int, captions: bool) -> Path:
    """Eight images of one shape; with `captions`, a metadata.jsonl (file_name, text) as imagefolder reads it."""
    from tinypipe.builtin.tiny_sd import write_shapes_folder

    write_shapes_folder(folder, count=8, resolution=resolution, shape=shape)
    for caption_file in folder.glob("*.txt"):
        caption_file.unlink()
    if captions:
        lines = [json.dumps({"file_name": image.name, "text": PROMPT}) for image in sorted(folder.glob("*.png"))]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def commands(method: str, steps: int, work: Path, model: Path, resolution: int, batch: int, args) -> tuple[list, list]:
    """The (peer, tinypipe) command lines of one method at `steps` steps; outputs go to fresh folders."""
    peer_python, examples, tp = args.peer_python, Path(args.examples), [sys.executable, "-m", "tinypipe"]
    out_peer, out_tp = work / f"out-peer-{method}-{steps}", work / f"out-tp-{method}-{steps}"
    for folder in (out_peer, out_tp):
        shutil.rmtree(folder, ignore_errors=True)
    common_peer = ["--pretrained_model_name_or_path", str(model), "--resolution", str(resolution),
                   "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--lr_scheduler", "constant",
                   "--lr_warmup_steps", "0", "--seed", "0", "--output_dir", str(out_peer), "--checkpointing_steps", "100000"]
    settings = {"max_train_steps": steps, "train_batch_size": batch, "resolution": resolution, "seed": 0,
                "lr_schedule": "constant", "num_validation_images": 0, "checkpointing_steps": 100000}
    if method == "lora":
        peer = [peer_python, str(examples / "train_text_to_image_lora.py"), *common_peer, "--train_data_dir",
                str(work / "captioned"), "--learning_rate", "1e-4", "--rank", "4"]
        ours = [*tp, "train-diffuser", "bench", str(model), str(work / "captioned"), PROMPT, "--method", "lora"]
        settings |= {"learning_rate": 1e-4, "rank": 4}
    elif method == "dreambooth":
        peer = [peer_python, str(examples / "train_dreambooth_lora.py"), *common_peer, "--instance_data_dir",
                str(work / "instance"), "--instance_prompt", PROMPT, "--with_prior_preservation", "--class_data_dir",
                str(work / "class"), "--class_prompt", CLASS_PROMPT, "--num_class_images", "8", "--learning_rate", "1e-4",
                "--rank", "4"]
        ours = [*tp, "train-diffuser", "bench", str(model), str(work / "instance"), PROMPT, "--method", "lora",
                "--prior-class-prompt", CLASS_PROMPT, "--prior-class-image-dir", str(work / "class"),
                "--num-prior-class-images", "8"]
        settings |= {"learning_rate": 1e-4, "rank": 4}
    elif method == "ti":
        peer = [peer_python, str(examples / "textual_inversion.py"), *common_peer, "--train_data_dir", str(work / "instance"),
                "--learnable_property", "object", "--placeholder_token", "<sks>", "--initializer_token", "circle",
                "--learning_rate", "5e-4", "--save_steps", "100000"]
        ours = [*tp, "train-diffuser", "bench", str(model), str(work / "instance"), "a photo of <sks>",
                "--method", "textual-inversion", "--initializer-token", "circle"]
        settings |= {"learning_rate": 5e-4}
    elif method in FAMILY_SCRIPTS:
        family_model = str(args.family_models[method])
        peer = [peer_python, str(examples / FAMILY_SCRIPTS[method]), *common_peer, "--instance_data_dir", str(work / "instance"),
                "--instance_prompt", PROMPT, "--learning_rate", "1e-4", "--rank", "4"]
        peer[peer.index("--pretrained_model_name_or_path") + 1] = family_model
        peer[peer.index("--resolution") + 1] = "32"
        ours = [*tp, "train-diffuser", "bench", family_model, str(work / "instance"), PROMPT, "--method", "lora"]
        settings |= {"learning_rate": 1e-4, "rank": 4, "resolution": 32}
    else:
        peer = [peer_python, str(BENCH / "peers" / "lm_trainer_peft.py"), str(args.lm_model), str(work / "records.json"),
                str(out_peer), "--steps", str(steps), "--batch", "4", "--max-length", "512", "--lr", "3e-4"]
        ours = [*tp, "train-lm", "bench", str(args.lm_model), str(work / "records.json"), "--lora-rank", "8",
                "--lora-alpha", "16", "--lora-dropout", "0.05"]
        settings = {"max_train_steps": steps, "train_batch_size": 4, "max_length": 512, "learning_rate": 3e-4,
                    "lr_schedule": "constant", "packing": False, "seed": 0, "checkpointing_steps": 100000,
                    "adam_weight_decay": 0.0}
    ours += ["--output", str(out_tp), "--training-args", json.dumps(settings)]
    return peer, ours


def _peer_scripts(method: str) -> list[str]:
    """The diffusers example scripts `method` runs (none for `lm`, whose peer is in bench/peers/)."""
    scripts = {"lora": "train_text_to_image_lora.py", "dreambooth": "train_dreambooth_lora.py",
               "ti": "textual_inversion.py", **FAMILY_SCRIPTS}
    return [scripts[method]] if method in scripts else []


def tail_mean_loss(metrics: Path) -> float:
    """The mean loss of the last tenth of the optimizer steps in a tinypipe run's `metrics.jsonl`."""
    losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if line.strip()]
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail) if tail else float("nan")


def summary(name: str, runs: list[Run]) -> str:
    def median(key: str) -> float:
        return statistics.median(getattr(run, key) for run in runs)

    return (f"{name:9s} wall {median('wall'):7.1f} s  first step {median('first_step'):6.1f} s  {median('per_step'):6.3f} s/step"
            f"  after {median('after_last'):5.1f} s  cpu {median('cpu'):7.1f} s  rss {median('peak_rss_mb'):6.0f} MB"
            f"  loss {median('loss'):.4f}")


def ratios(peer: list[Run], ours: list[Run]) -> str:
    parts = []
    for key, label in (("wall", "wall"), ("first_step", "first step"), ("per_step", "s/step"), ("cpu", "cpu"),
                       ("peak_rss_mb", "rss")):
        values = [getattr(o, key) / getattr(p, key) for p, o in zip(peer, ours)]
        parts.append(f"{label} {statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})")
    return "ratio     " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="lora,dreambooth,ti,lm")
    parser.add_argument("--steps", default="30,200")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="sd128", choices=["sd128", "tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--peer-python", default="/tmp/benchvenv/bin/python")
    parser.add_argument("--examples", default="/tmp/diffusers_examples")
    args = parser.parse_args()
    needed = [Path(args.peer_python)] + [Path(args.examples) / script for method in args.methods.split(",")
                                        for script in _peer_scripts(method)]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        sys.exit(f"Missing peer set-up: {', '.join(missing)}. Run `bash bench/peers/setup.sh <diffusers clone>` "
                 "(see this script's docstring) or pass --peer-python / --examples.")
    sys.path.insert(0, str(BENCH))
    from bench_lora_step import build_model

    from tinypipe.builtin.tiny_llama import builtin_lm_folder, tiny_instructions

    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TINYPIPE_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    model = build_model(args.model, work / "model")
    resolution = 128 if args.model == "sd128" else 64
    write_images(work / "captioned", "circle", resolution, captions=True)
    write_images(work / "instance", "circle", resolution, captions=False)
    write_images(work / "class", "square", resolution, captions=False)
    args.lm_model = builtin_lm_folder()
    from tinypipe.builtin.diffusion_folders import builtin_diffusion_folder

    args.family_models = {"sdxl": builtin_diffusion_folder("tinypipe/tiny-sdxl"), "flux": builtin_diffusion_folder("tinypipe/tiny-flux")}
    (work / "records.json").write_text(json.dumps(tiny_instructions() * 5))
    print(f"model {args.model} ({resolution} px), batch {args.batch}, {args.pairs} interleaved pairs; work {work}")
    for method in args.methods.split(","):
        for steps in (int(value) for value in args.steps.split(",")):
            peer_runs, our_runs = [], []
            for _ in range(args.pairs):
                peer, ours = commands(method, steps, work, model, resolution, args.batch, args)
                peer_runs.append(timed_run(peer, steps, env))
                our_runs.append(timed_run(ours, steps, env))
                if method == "lm":  # the same measure as the peer prints: the mean loss of the last tenth of the steps
                    our_runs[-1].loss = tail_mean_loss(work / f"out-tp-{method}-{steps}" / "metrics.jsonl")
                print(f"  pair {len(our_runs)}: {method} {steps} steps, wall peer {peer_runs[-1].wall:.1f} s / tinypipe "
                      f"{our_runs[-1].wall:.1f} s, cpu {peer_runs[-1].cpu:.1f} / {our_runs[-1].cpu:.1f} s", flush=True)
            print(f"\n== {method}, {steps} steps")
            print(summary("peer", peer_runs))
            print(summary("tinypipe", our_runs))
            print(ratios(peer_runs, our_runs), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
