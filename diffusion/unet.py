"""The latent denoising network: MONAI's 3-D ``DiffusionModelUNet`` with cross-attention.

    UNet([x_t, back-projected X-ray features], t, context) -> output (B, C, x, y, z)

Input channels are the latent's plus, with geometry-aware conditioning, the back-projected
feature channels of every view; the output has the latent's channels and means what the
config's ``prediction_type`` says (v, epsilon or x0). Attention runs through
x2ct.diffusion.attention (SDPA, or xformers on CUDA when installed). With the config's
``gradient_checkpointing`` its blocks recompute their activations in the backward pass
(x2ct.checkpointing).
"""

from __future__ import annotations

from monai.networks.nets import DiffusionModelUNet

from x2ct.checkpointing import checkpoint_modules
from x2ct.diffusion.attention import enable_xformers
from x2ct.diffusion.config import LatentDiffusionConfig

__all__ = ["build_unet"]


def build_unet(config: LatentDiffusionConfig) -> DiffusionModelUNet:
    unet = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=config.unet_in_channels,
        out_channels=config.latent_channels,
        num_res_blocks=config.num_res_blocks,
        channels=config.unet_channels,
        attention_levels=config.attention_levels,
        norm_num_groups=config.norm_num_groups,
        num_head_channels=config.num_head_channels,
        with_conditioning=True,
        cross_attention_dim=config.context_dim,
        use_flash_attention=True,  # PyTorch SDPA inside MONAI's attention blocks
    )
    enable_xformers(unet)  # route attention through the one predicate (and log which ran)
    if config.gradient_checkpointing:  # each down, middle and up block
        checkpoint_modules([*unet.down_blocks, unet.middle_block, *unet.up_blocks])
    return unet
