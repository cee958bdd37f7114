"""Drop Lightning's advertising tips ("💡 Tip: ... try installing litlogger / litmodels") from the output."""

from __future__ import annotations

import logging

_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"  # where Lightning's rank_zero_info logs


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def silence_tips() -> None:
    """Install the filter once on the logger that Lightning's ``rank_zero_info`` writes to."""
    logger = logging.getLogger(_RANK_ZERO_LOGGER)
    if not any(isinstance(f, _NoTips) for f in logger.filters):
        logger.addFilter(_NoTips())
