"""Loading a foreign state dict through a table of key-renaming rules, with a report by key name.

A format is described by data only (see :mod:`lightning_blip.weights.transformers_blip`): an ordered
list of ``(regex, replacement)`` rules from its keys to ours, and regexes of our keys that the format
is known not to hold. This module applies such a table; it knows no format.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_blip.weights.pos_embed import resize_position_embeddings

Rule = tuple[str, str]
"""``(regex over a whole source key, replacement with \\1-style groups)``: the target key of ours."""


@dataclass
class LoadReport:
    """What a load did, by key name.

    Attributes:
        loaded: our keys that received a weight.
        missing_expected: our keys the source format does not hold (e.g. the LM head of a retrieval
            checkpoint); they keep their current values.
        missing: our keys the source should have held but did not (a real problem).
        unexpected: source keys that no rule maps, or whose target this model lacks.
        tied: source keys that duplicate another source key mapped to the same weight (tied
            weights, checked equal) and were not loaded a second time.
        ignored: source keys the format lists as holding no weights (e.g. index buffers), or that
            this kind of model does not use (e.g. the momentum encoders of a pretraining checkpoint).
        mismatched: our keys left at their initialisation because the source's shape differs.
    """

    loaded: list[str] = field(default_factory=list)
    missing_expected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, report: dict) -> LoadReport:
        """A report from its ``asdict`` form (``conversion.json``), fields it lacks left empty."""
        return cls(**{k: list(v) for k, v in report.items() if k in cls.__dataclass_fields__})

    def summary(self, shown: int = 5) -> str:
        """One line of counts, naming the first ``shown`` missing and mismatched keys."""

        def named(keys: list[str]) -> str:
            more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
            return f" ({', '.join(keys[:shown])}{more})" if keys else ""

        parts = [f"{len(self.loaded)} weights loaded", f"{len(self.missing_expected)} absent as expected"]
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} left at init, shape differs{named(self.mismatched)}")
        parts.append(f"{len(self.missing)} missing{named(self.missing)}")
        parts.append(f"{len(self.unexpected) + len(self.ignored) + len(self.tied)} source keys not used")
        return ", ".join(parts)

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} keys, {len(self.missing_expected)} absent as expected",
            f"missing ({len(self.missing)}): {self.missing}",
            f"unexpected ({len(self.unexpected)}): {self.unexpected}",
        ]
        return "\n".join(lines)


def rename(key: str, rules: Sequence[Rule]) -> str | None:
    """Our name of a source ``key`` by the first rule whose regex matches it whole; None if none does."""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(replacement)
    return None


def load_with_rules(
    model: nn.Module,
    state: dict[str, Tensor],
    rules: Sequence[Rule],
    expected_absent: Sequence[str] = (),
    ignored: Sequence[str] = (),
    strict: bool = True,
    source: str = "state dict",
) -> LoadReport:
    """Rename ``state`` with ``rules`` and load it into ``model``; see :class:`LoadReport`.

    Two source keys renamed to the same weight must hold equal tensors (tied weights); the second
    is reported in ``tied``. A ViT ``pos_embed`` of another grid is resampled to this model's.

    Args:
        model: the module to fill (in place).
        state: the source ``{key: tensor}``.
        rules: the format's renaming table.
        expected_absent: regexes (whole key) of our keys the source is known not to hold.
        ignored: regexes (whole key) of source keys to skip (buffers that hold no weights).
        strict: raise when a key is missing (not expected) or unexpected.
        source: a name for messages.

    Raises:
        ValueError: a shape differs (key and both shapes named) or tied source keys differ.
        KeyError: ``strict`` and keys are missing or unexpected (named).
    """
    own = model.state_dict()
    # names that share one parameter (tied weights) count as loaded together
    aliases: dict[int, list[str]] = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        aliases.setdefault(id(tensor), []).append(name)
    alias_of = {name: names for names in aliases.values() for name in names}

    report = LoadReport()
    targets: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    skip = [re.compile(p) for p in ignored]
    for key, value in state.items():
        if any(p.fullmatch(key) for p in skip):
            report.ignored.append(key)
            continue
        target = rename(key, rules)
        if target is None or target not in own:
            report.unexpected.append(key)
            continue
        first = next((a for a in alias_of.get(target, [target]) if a in targets), None)
        if first is not None:
            if targets[first].shape != value.shape or not torch.equal(targets[first], value):
                raise ValueError(f"{source}: {key!r} and {origin[first]!r} both map to {target!r} but differ")
            report.tied.append(key)
            continue
        expected = own[target].shape
        if value.shape != expected and target.endswith("pos_embed") and value.dim() == 3:
            value = _resample_pos_embed(model, target, value, expected)
        if value.shape != expected:
            raise ValueError(
                f"{source}: {key!r} (ours {target!r}) has shape {tuple(value.shape)}, "
                f"this model's has {tuple(expected)}"
            )
        targets[target] = value
        origin[target] = key
    model.load_state_dict(targets, strict=False)

    loaded = {a for t in targets for a in alias_of.get(t, [t])}
    absent = [re.compile(p) for p in expected_absent]
    for key in own:
        if key in loaded:
            report.loaded.append(key)
        elif any(p.fullmatch(key) for p in absent):
            report.missing_expected.append(key)
        else:
            report.missing.append(key)
    if strict and (report.missing or report.unexpected):
        raise KeyError(f"{source}: missing keys {report.missing}, unexpected keys {report.unexpected}")
    return report


def _resample_pos_embed(model: nn.Module, target: str, value: Tensor, shape: torch.Size) -> Tensor:
    """Interpolate a ViT position embedding ``(1, P + N, D)`` to the grid of ``target``'s owner."""
    vit = model.get_submodule(target.rsplit(".", 1)[0])
    if value.shape[-1] != shape[-1] or not hasattr(vit, "patch_embed"):
        return value
    return resize_position_embeddings(value, vit.patch_embed.grid_size, vit.num_prefix_tokens)


def _strip_to(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Drop the task wrappers' key prefixes (``model.``, ``model.blip.``, ``model.blip2.``)."""
    own = model.state_dict().keys()
    for prefix in ("model.blip2.", "model.blip.", "model.", ""):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and any(k in own for k in stripped):
            return stripped
    return state


def load_own_state(
    model: nn.Module, state: dict[str, Tensor], frozen: tuple[str, ...], strict: bool, source: str
):
    """Load our own keys (task prefixes stripped); keys under ``frozen`` may be absent.

    Raises:
        KeyError: ``strict`` and keys are missing (beyond ``frozen``) or unexpected (named).
        ValueError: a shape differs (key and both shapes named).
    """
    state = _strip_to(state, model)
    absent = tuple(re.escape(p) + ".*" for p in frozen)
    return load_with_rules(model, state, ((r"(.*)", r"\1"),), absent, strict=strict, source=source)
