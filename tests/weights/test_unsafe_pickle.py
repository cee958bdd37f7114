"""A torch file that needs arbitrary unpickling is refused, and nothing in it is constructed."""

from __future__ import annotations

import pytest
import torch

from lightning_blip.weights.checkpoint_io import load_state_dict_file

pytestmark = pytest.mark.usefixtures("one_thread")

CONSTRUCTED: list[str] = []


class Payload:
    """Records every construction, including the one unpickling would do."""

    def __new__(cls, *args, **kwargs):
        CONSTRUCTED.append("new")
        return super().__new__(cls)

    def __setstate__(self, state: dict) -> None:
        CONSTRUCTED.append("setstate")
        self.__dict__.update(state)


def test_arbitrary_unpickling_is_refused_before_construction(tmp_path):
    path = tmp_path / "model.pth"
    payload = Payload()
    payload.note = "x"
    torch.save({"model": {"weight": torch.ones(2)}, "extra": payload}, path)
    CONSTRUCTED.clear()
    with pytest.raises(ValueError, match="needs arbitrary unpickling to load, which is refused"):
        load_state_dict_file(path)
    assert CONSTRUCTED == []
    # the same file unpickled without the guard would have built it: the check above can fail
    assert isinstance(torch.load(path, weights_only=False)["extra"], Payload)
    assert CONSTRUCTED == ["new", "setstate"]
