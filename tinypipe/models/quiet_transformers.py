"""A logging filter for one transformers notice that does not apply to tinypipe."""

import logging


class _NoTorchvisionNotice(logging.Filter):
    """Drops transformers' "requires torchvision (not installed); falling back to ...Pil" notice.

    tinypipe does its image transforms with PIL + numpy and never needs torchvision, so the notice, which
    transformers logs whenever diffusers imports a CLIP image processor, would only confuse users.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
