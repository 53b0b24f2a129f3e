"""Zip files: results written atomically, and extraction that never writes outside its folder."""

import os
import zipfile

import pytest

from tinypipe.archive import safe_extract, write_zip
from tinypipe.errors import DataError


def test_write_zip_and_safe_extract_round_trip(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    target = write_zip({"model/a.txt": tmp_path / "a.txt", "validation/b.bin": tmp_path / "b.bin"}, tmp_path / "out.zip")
    assert sorted(zipfile.ZipFile(target).namelist()) == ["model/a.txt", "validation/b.bin"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    folder = safe_extract(target, tmp_path / "extracted")
    assert (folder / "model" / "a.txt").read_text() == "alpha" and (folder / "validation" / "b.bin").read_bytes() == b"\x00\x01"


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/escape.txt", "data/../../escape.txt", "C:/escape.txt", "..\\escape.txt"])
def test_a_member_that_would_escape_is_refused_before_anything_is_written(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("fine.txt", "ok")
        zip_file.writestr(name, "escaped")
    with pytest.raises(DataError, match="escape") as error:
        safe_extract(archive, tmp_path / "inside" / "target")
    assert str(archive) in str(error.value)
    assert not (tmp_path / "inside" / "target").exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "inside" / "escape.txt").exists()


def test_a_symbolic_link_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zip_file.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract(archive, tmp_path / "target")


def test_a_file_that_is_not_a_zip_is_named(tmp_path):
    path = tmp_path / "data.zip"
    path.write_text("not a zip")
    with pytest.raises(DataError, match="data.zip is not a readable zip"):
        safe_extract(path, tmp_path / "target")
