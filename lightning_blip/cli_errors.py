"""The error behind a failed model or data instantiation, without jsonargparse's wrapping.

jsonargparse re-raises an error of ``__init__`` inside "Does not validate against any of the Union
subtypes ... Given value: Namespace(...)", a dump of the whole config, with the real error as its
``__cause__``. :func:`underlying_error` finds that error so the CLI can end with its one line.
"""

from __future__ import annotations

from pathlib import Path

import jsonargparse

_JSONARGPARSE = Path(jsonargparse.__file__).parent


def _raised_by_jsonargparse(error: BaseException) -> bool:
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return Path(traceback.tb_frame.f_code.co_filename).is_relative_to(_JSONARGPARSE)


def underlying_error(error: BaseException) -> BaseException:
    """The outermost exception of ``error``'s ``__cause__`` chain that jsonargparse did not raise
    (``error`` itself if there is none)."""
    current: BaseException | None = error
    while current is not None:
        if not _raised_by_jsonargparse(current):
            return current
        current = current.__cause__
    return error
