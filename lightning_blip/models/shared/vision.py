"""Image encoder: any timm Vision Transformer by name, returning all tokens."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import timm
import torch
from timm.layers import LayerNorm
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_blip.weights.checkpoint_io import load_state_dict_file
from lightning_blip.weights.download import resolve_pretrained
from lightning_blip.weights.pos_embed import resize_position_embeddings

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's image mean and standard deviation per channel, which BLIP and BLIP-2 normalise with."""


RANDOM = "random"
"""``VisionConfig.weights`` of a ViT left random on purpose."""


def check_frozen_weights(vision: VisionConfig, field: str) -> None:
    """Refuse to train with a frozen ViT whose weights would stay random (``weights`` None), naming
    ``field``; ``weights: random`` says it is meant (tests, demos)."""
    if vision.weights is None:
        raise ValueError(
            f"{field} is not set: the frozen image encoder ({vision.model_name}) would stay random. Name its "
            "weights (a file, or a released name such as 'eva-vit-g' or 'clip-vit-l14': lightning_blip "
            f"list-pretrained), or set {field}: random to train on a random frozen encoder on purpose"
        )


@dataclass
class VisionConfig:
    """Which timm ViT to build and how.

    Attributes:
        model_name: timm model name, e.g. ``vit_base_patch16_224``, ``vit_large_patch16_224``,
            ``eva_giant_patch14_224`` (EVA-CLIP ViT-g/14) or ``vit_large_patch14_clip_quickgelu_224`` (OpenAI
            CLIP ViT-L/14, QuickGELU as LAVIS; timm's ``vit_large_patch14_clip_224`` has GELU).
        image_size: input resolution; position embeddings are interpolated to it.
        drop_path: stochastic depth rate.
        grad_checkpointing_layers: recompute the last k blocks in backward (0 = off).
        num_removed_blocks: drop the last k blocks (BLIP-2 uses the second-to-last layer's output).
        final_norm: apply the ViT's final LayerNorm (BLIP does; BLIP-2 does not).
        layer_norm_eps: epsilon of every LayerNorm of the ViT, the final norm included; None keeps
            the timm architecture's own: 1e-6 for timm's ViTs and EVA (BLIP's and LAVIS's value),
            1e-5 for its CLIP ViTs (OpenAI's).
        weights: where the ViT's weights come from: a local checkpoint (safetensors or a torch file
            loaded with weights_only), the name of a released one (``eva-vit-g``, ``clip-vit-l14``,
            ``vit-b16-deit``, ``vit-l16-augreg``: ``lightning_blip list-pretrained``; cached, else
            downloaded), ``"random"`` (random on purpose: tests, demos) or None (random; training a
            frozen encoder so is refused, see :func:`check_frozen_weights`).
        timm_kwargs: extra keyword arguments for ``timm.create_model``.
    """

    model_name: str = "vit_base_patch16_224"
    image_size: int = 224
    drop_path: float = 0.0
    grad_checkpointing_layers: int = 0
    num_removed_blocks: int = 0
    final_norm: bool = True
    layer_norm_eps: float | None = None
    weights: str | None = None
    timm_kwargs: dict | None = None


class VisionEncoder(nn.Module):
    """A timm ViT that returns every token, ``(B, 1 + N, D)`` with [CLS] first.

    Weights come from ``config.weights`` (a local file or a released name) or stay random.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        eps = config.layer_norm_eps
        norm = {} if eps is None else {"norm_layer": partial(LayerNorm, eps=eps)}
        self.vit = timm.create_model(
            config.model_name,
            pretrained=False,
            num_classes=0,
            img_size=config.image_size,
            drop_path_rate=config.drop_path,
            **norm,
            **(config.timm_kwargs or {}),
        )
        if not hasattr(self.vit, "blocks") or not hasattr(self.vit, "_pos_embed"):
            raise ValueError(f"vision.model_name={config.model_name!r} is not a timm ViT with blocks")
        if config.num_removed_blocks:
            self.vit.blocks = self.vit.blocks[: len(self.vit.blocks) - config.num_removed_blocks]
        if not config.final_norm:
            self.vit.norm = nn.Identity()
        self.width: int = self.vit.embed_dim
        if config.weights and config.weights != RANDOM:
            self.load_weights(config.weights)

    def load_weights(self, path: str | Path, strict: bool = True) -> None:
        """Load ViT weights from a local file or a released name (a hub snapshot's ``model.safetensors``),
        interpolating position embeddings to this image size."""
        local, _ = resolve_pretrained(path)
        if local.is_dir():  # a timm hub snapshot
            local = local / "model.safetensors"
        self.load_vit_state_dict(load_state_dict_file(local), strict, source=str(path))

    def load_vit_state_dict(self, state: dict, strict: bool = True, source: str = "state dict") -> None:
        """Load ViT weights (keys with or without ``vit.``), interpolating position embeddings.

        E.g. a 224-px pretrained ViT into a 384/480-px fine-tuning model.
        """
        state = {k.removeprefix("vit."): v for k, v in state.items()}
        own = self.vit.state_dict()
        if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
            state["pos_embed"] = resize_position_embeddings(
                state["pos_embed"], self.vit.patch_embed.grid_size, self.vit.num_prefix_tokens
            )
        for drop in [k for k in state if k.startswith(("head.", "fc_norm."))]:
            state.pop(drop)
        for key, value in state.items():
            if key in own and value.shape != own[key].shape:
                raise ValueError(
                    f"vision weights {source}: {key!r} has shape {tuple(value.shape)}, "
                    f"this model's has {tuple(own[key].shape)}"
                )
        missing, unexpected = self.vit.load_state_dict(state, strict=False)
        # blocks removed by ``num_removed_blocks`` are expected to be unused
        unexpected = [k for k in unexpected if not k.startswith("blocks.")]
        if strict and (missing or unexpected):
            raise KeyError(f"vision weights {source}: missing keys {missing}, unexpected keys {unexpected}")

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that take no weight decay."""
        return {f"vit.{name}" for name in getattr(self.vit, "no_weight_decay", lambda: set())()}

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1 + N, D)``."""
        vit = self.vit
        x = vit._pos_embed(vit.patch_embed(pixel_values))
        block_kwargs = {}
        if isinstance(x, tuple):  # EVA-style ViTs also return their rotary embedding (None for EVA-01)
            x, block_kwargs["rope"] = x
        if vit.patch_drop is not None:
            x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        first_checkpointed = len(vit.blocks) - self.config.grad_checkpointing_layers
        for i, block in enumerate(vit.blocks):
            if i >= first_checkpointed and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False, **block_kwargs)
            else:
                x = block(x, **block_kwargs)
        return vit.norm(x)


def vision_config_from_transformers(v, model_name: str, **kw) -> VisionConfig:
    """Our :class:`VisionConfig` of a transformers BLIP / BLIP-2 vision config ``v``: timm's
    ``model_name`` architecture with ``v``'s sizes and LayerNorm epsilon (``kw``: more ``VisionConfig``
    fields)."""
    timm_kwargs = {
        "embed_dim": v.hidden_size,
        "depth": v.num_hidden_layers,
        "num_heads": v.num_attention_heads,
        "patch_size": v.patch_size,
        "mlp_ratio": v.intermediate_size / v.hidden_size,
    }
    return VisionConfig(
        model_name=model_name,
        image_size=v.image_size,
        layer_norm_eps=v.layer_norm_eps,
        timm_kwargs=timm_kwargs,
        **kw,
    )
