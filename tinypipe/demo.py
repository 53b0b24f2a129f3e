"""The main job of the README's quick start.

For now it shows the config core end to end: build a small torch model that records how it was
built, save it as a repo, verify and reload it, and check the reloaded model computes the same.
"""

from pathlib import Path

import torch

from .config import AutoModelPipeline, ConfigMixin, save_config


class DemoModel(ConfigMixin, torch.nn.Module):
    """A two-layer perceptron that records its constructor arguments."""

    @save_config
    def __init__(self, width: int = 16, depth: int = 2, activation: str = "gelu"):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [torch.nn.Linear(width, width), torch.nn.GELU() if activation == "gelu" else torch.nn.ReLU()]
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers(inputs)


def run_demo(output: Path) -> None:
    """Save a model as a repo, reload it with `AutoModelPipeline`, and show that nothing changed."""
    torch.manual_seed(0)
    model = DemoModel(width=32, depth=3)
    repo = model.save_pretrained(output)
    print(f"Saved {type(model).__name__} to {repo}:")
    for path in sorted(repo.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(repo)}  ({path.stat().st_size} bytes)")
    reloaded = AutoModelPipeline.from_pretrained(repo)
    sample = torch.randn(4, 32)
    same = torch.equal(model(sample), reloaded(sample))
    print(f"Reloaded {type(reloaded).__name__} with config {dict(reloaded.config)}; same outputs: {same}")
    if not same:
        raise SystemExit("The reloaded model differs from the saved one.")
