"""Benchmark: start-up time of `tinypipe --help` and of every sub-command's `--help` (target: < 0.5 s).

Each figure is the median wall time of a fresh `python -m tinypipe ... --help` process, next to a bare
`python -c pass` measured in the same run (the interpreter's own start-up, which no CLI can beat).

Usage: python bench/bench_cli_help.py [--repeats 5]
"""

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = ([], ["train-diffuser"], ["train-lm"], ["get-most-recent-jobs"], ["check-job-status"], ["download-model"],
            ["cancel"], ["generate"], ["push"], ["derive"], ["demo"])


def median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    bare = median_seconds([sys.executable, "-c", "pass"], repeats)
    print(f"python -c pass (reference): {bare * 1000:.0f} ms")
    worst = 0.0
    for command in COMMANDS:
        seconds = median_seconds([sys.executable, "-m", "tinypipe", *command, "--help"], repeats)
        worst = max(worst, seconds)
        print(f"tinypipe {' '.join(command + ['--help']):32s} {seconds * 1000:6.0f} ms  ({seconds / bare:.1f}x bare python)")
    print(f"slowest: {worst * 1000:.0f} ms (target < 500 ms): {'met' if worst < 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
