"""CapFilt: bootstrap an image-text data set with a captioner (synthetic captions) and a filter (ITM).

``filtering`` holds the model steps (no Lightning); ``plan``, ``data``, ``task``, ``writer`` and
``command`` the ``lightning_blip capfilt`` run on 1..N devices.
"""

from lightning_blip.capfilt.filtering import (
    CaptionSettings,
    FilterSettings,
    sample_captions,
    score_texts,
    select_texts,
)
from lightning_blip.capfilt.plan import Source

__all__ = ["CaptionSettings", "FilterSettings", "Source", "sample_captions", "score_texts", "select_texts"]
