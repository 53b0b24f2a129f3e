"""Benchmark: loading a repo holding ~1 GB of safetensors weights.

Compares, on the same file in the same run:
- `from_pretrained` of an already verified repo vs `safetensors.torch.load_file` of its weights
  (target: <= 1.1x);
- first-load verification hashing (tinypipe's streamed sha256) vs the `sha256sum` tool
  (target: >= 80% of its speed).

Usage: python bench/bench_repo_load.py [--gigabytes 1.0] [--repeats 3]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tinypipe import ConfigMixin, save_config
from tinypipe.config import filelist


class BigModel(ConfigMixin, torch.nn.Module):
    """A stack of square linear layers, sized to the benchmark."""

    @save_config
    def __init__(self, layers: int = 16, width: int = 4096):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width, bias=False) for _ in range(layers))


def read_all(tensors) -> float:
    """Read every byte of the tensors (a sum), so lazily mapped weights are really loaded."""
    return float(sum(tensor.detach().sum() for tensor in tensors))


def timed(function, repeats: int) -> float:
    """Median wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    width = 4096
    layers = max(1, round(arguments.gigabytes * 2**30 / (width * width * 4)))
    work = Path(tempfile.mkdtemp(prefix="tinypipe-bench-", dir=os.environ.get("BENCH_DIR")))
    os.environ["TINYPIPE_HOME"] = str(work / "home")
    try:
        with torch.device("meta"):
            model = BigModel(layers=layers, width=width)
        model = model.to_empty(device="cpu")
        for parameter in model.parameters():
            parameter.data.normal_()
        repo = model.save_pretrained(work / "repo")
        weights = repo / "model" / BigModel.__weight__
        size = weights.stat().st_size
        del model
        print(f"repo: {layers} x Linear({width}, {width}) = {size / 2**30:.2f} GiB of safetensors")
        time.sleep(2.1)  # let the files age past the "racy timestamp" window so they can be stamped

        # Hashing speed: tinypipe's streamed sha256 vs sha256sum, page cache warm for both.
        subprocess.run(["cat", str(weights)], stdout=subprocess.DEVNULL, check=True)
        ours = timed(lambda: filelist.sha256_file(weights), arguments.repeats)
        tool = timed(lambda: subprocess.run(["sha256sum", str(weights)], stdout=subprocess.DEVNULL, check=True), arguments.repeats)
        print(f"sha256: tinypipe {size / ours / 2**20:.0f} MiB/s, sha256sum {size / tool / 2**20:.0f} MiB/s "
              f"-> {tool / ours:.2f}x of sha256sum's speed (target >= 0.80)")

        # First load: verification hashes every file.
        shutil.rmtree(Path(os.environ["TINYPIPE_HOME"]) / "verified", ignore_errors=True)
        first = timed(lambda: read_all(BigModel.from_pretrained(repo).parameters()), 1)

        # Repeat loads of the verified repo vs the raw safetensors load of the same file. safetensors
        # maps the file lazily, so both sides read every weight once to make the load real.
        raw = timed(lambda: read_all(load_file(weights).values()), arguments.repeats)
        repeat = timed(lambda: read_all(BigModel.from_pretrained(repo).parameters()), arguments.repeats)
        print(f"load: raw load_file {raw:.3f} s, first from_pretrained {first:.3f} s (hash included), "
              f"repeat from_pretrained {repeat:.3f} s -> {repeat / raw:.2f}x raw (target <= 1.10)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
