"""Tests for `tinypipe.models.quiet_transformers`: transformers' torchvision notice is dropped, nothing else."""

import logging

import tinypipe.models  # noqa: F401  (installs the filter)


def test_only_the_torchvision_notice_is_dropped(caplog):
    logger = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.INFO, logger="transformers.utils.import_utils"):
        logger.warning("CLIPImageProcessor requires torchvision (not installed); falling back to CLIPImageProcessorPil.")
        logger.warning("Some other notice.")
    assert [record.getMessage() for record in caplog.records] == ["Some other notice."]
