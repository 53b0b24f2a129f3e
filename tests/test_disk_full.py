"""A full disk while saving a repo, checkpointing or extracting a zip is one `StorageError` naming the path and that
the disk is full; nothing half-written is left, and what was there before still loads.

The full disk is real: a small tmpfs mounted for the test (root only, as on CI; skipped elsewhere).
"""

import os
import subprocess
import zipfile

import pytest
import torch

from tinypipe import ConfigMixin, save_config
from tinypipe.archive import safe_extract
from tinypipe.errors import StorageError
from tinypipe.training.checkpoints import latest_checkpoint, save_checkpoint


class Wide(ConfigMixin, torch.nn.Module):
    @save_config
    def __init__(self, width: int = 8):
        torch.nn.Module.__init__(self)
        self.linear = torch.nn.Linear(width, width)


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB file system."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_a_save_that_fills_the_disk_keeps_the_previous_save(small_disk):
    repo = small_disk / "repo"
    Wide(width=8).save_pretrained(repo)
    with pytest.raises(StorageError, match=f"Saving {repo} failed: the disk holding {repo} is full"):
        Wide(width=512).save_pretrained(repo)  # 1 MiB of weights
    assert Wide.from_pretrained(repo).linear.in_features == 8
    assert leftovers(small_disk) == []


def test_a_checkpoint_that_fills_the_disk_keeps_the_previous_checkpoint(small_disk):
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters())
    first = save_checkpoint(small_disk, 1, trainable=dict(model.named_parameters()), optimizer=optimizer, lr_scheduler=None)
    big = {"weight": torch.zeros(512, 512)}
    with pytest.raises(StorageError, match="Saving checkpoint 2 failed: the disk holding .* is full"):
        save_checkpoint(small_disk, 2, trainable=big, optimizer=optimizer, lr_scheduler=None)
    assert latest_checkpoint(small_disk) == first
    assert leftovers(small_disk) == []


def test_extracting_a_zip_that_fills_the_disk_leaves_nothing(small_disk, tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zip_file:
        zip_file.writestr("images/big.bin", bytes(1 << 20))
    with pytest.raises(StorageError, match=f"Extracting {archive} failed: the disk holding .* is full"):
        safe_extract(archive, small_disk / "data")
    assert list(small_disk.iterdir()) == []
