"""Distributed-checkpoint directories are read without arbitrary unpickling, and consolidate to one file."""

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from lightning_blip.weights.distributed import consolidate, read_distributed_state_dict


class Payload:
    """An arbitrary class: loading it back would need an unrestricted unpickler."""


def _save(directory, state):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=directory, no_dist=True)


def _state():
    weights = {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(2).to(torch.bfloat16)}
    return {"state_dict": weights, "epoch": 3, "optimizer": {"param_groups": [{"lr": 0.1, "params": [0]}]}}


def test_reads_values_and_consolidates_only_the_weights(tmp_path):
    state = _state()
    _save(tmp_path / "ckpt", state)
    torch.save({"epoch": 3, "hyper_parameters": {"x": 1}}, tmp_path / "ckpt" / "meta.pt")

    read = read_distributed_state_dict(tmp_path / "ckpt")
    assert read["epoch"] == 3 and read["optimizer"] == state["optimizer"]
    for key, value in state["state_dict"].items():
        assert torch.equal(read["state_dict"][key], value) and read["state_dict"][key].dtype == value.dtype
    assert set(read_distributed_state_dict(tmp_path / "ckpt", keys={"state_dict"})) == {"state_dict"}

    merged = torch.load(consolidate(tmp_path / "ckpt", tmp_path / "one.ckpt"), weights_only=True)
    assert (
        merged["hyper_parameters"] == {"x": 1} and merged["state_dict"].keys() == state["state_dict"].keys()
    )


def test_metadata_that_would_run_code_is_refused(tmp_path):
    _save(tmp_path / "ckpt", _state())
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match="refused for safety: global .*system"):
        consolidate(tmp_path / "ckpt", tmp_path / "one.ckpt")
    assert not marker.exists() and not (tmp_path / "one.ckpt").exists()


def test_a_value_that_needs_unpickling_is_refused_by_key(tmp_path):
    state = _state()
    state["callbacks"] = Payload()
    _save(tmp_path / "ckpt", state)
    with pytest.raises(ValueError, match="'callbacks' needs arbitrary unpickling"):
        read_distributed_state_dict(tmp_path / "ckpt")
    # the weights alone never touch that value
    assert "a.weight" in read_distributed_state_dict(tmp_path / "ckpt", keys={"state_dict"})["state_dict"]
