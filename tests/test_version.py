"""tinypipe.version: files written by a newer major version are refused, naming the file and the fix."""

import pytest

from tinypipe import __version__
from tinypipe.errors import ConfigError
from tinypipe.version import check_version


def test_the_package_reports_the_version_it_records():
    import tinypipe.version

    assert __version__ == tinypipe.version.__version__


@pytest.mark.parametrize("written_by", [None, "0.0.1", __version__, f"{__version__.split('.')[0]}.99.0"])
def test_files_of_this_or_an_older_major_version_are_read(written_by):
    check_version(written_by, "repo/model/config.json")


def test_a_newer_major_version_is_refused_with_the_upgrade_command():
    newer = f"{int(__version__.split('.')[0]) + 1}.0.0"
    with pytest.raises(ConfigError, match=rf"repo/model/config.json was written by tinypipe {newer}.*pip install -U tinypipe"):
        check_version(newer, "repo/model/config.json")


def test_a_version_that_is_not_a_version_is_named():
    with pytest.raises(ConfigError, match=r"'__version__' is 'banana'"):
        check_version("banana", "repo/model/config.json")
