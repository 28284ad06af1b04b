"""`CTAutoencoder`: a 3D KL or VQ autoencoder for CT, built on MONAI's networks.

    x (B, 1, X, Y, Z) in [-1, 1]  --encode-->  z (B, C, X/4, Y/4, Z/4), about unit variance
    z                              --decode-->  x_hat (B, 1, X, Y, Z)

encode() returns the *scaled* latent (z_raw - shift) * scaling_factor (diffusers' VAE
convention, STYLE.md 6); decode() undoes the scaling. KL uses the posterior mean, VQ the
quantised code. Sizes not divisible by 4 are padded with -1 (air) at the high end of each
axis; `reconstruct` crops back, `decode(z, shape=...)` crops to a given size. Volumes with
more voxels than `tile_threshold` are processed in overlapping tiles (autoencoder/tiling.py).

Checkpoints: `save_pretrained(dir)` writes config.json + model.safetensors atomically,
`from_pretrained(dir)` rebuilds from them. Never pickle.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import VQVAE, AutoencoderKL
from torch import nn

from x2ct.autoencoder.config import AutoencoderConfig
from x2ct.autoencoder.tiling import tiled_apply
from x2ct.checkpointing import checkpoint_modules
from x2ct.data.transforms import hu_to_unit, unit_to_hu
from x2ct.fileio import atomic_dir
from x2ct.models import model_path, not_found_hint
from x2ct.state import load_weights, write_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# MONAI AutoencoderKL blocks run under checkpointing with gradient_checkpointing: the
# residual, attention and resampling blocks (not the cheap convolutions and norms at
# either end)
CHECKPOINTED_BLOCKS = ("AEKLResBlock", "AEKLDownsample", "UpSample", "SpatialAttentionBlock")


def build_network(config: AutoencoderConfig) -> nn.Module:
    """The MONAI network a config describes."""
    if config.kind == "kl":
        net = AutoencoderKL(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=config.channels,
            num_res_blocks=config.num_res_blocks,
            attention_levels=config.attention_levels,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups,
            with_encoder_nonlocal_attn=config.with_nonlocal_attn,
            with_decoder_nonlocal_attn=config.with_nonlocal_attn,
        )
        if config.gradient_checkpointing:  # x2ct.checkpointing: why not MONAI's flag
            checkpoint_modules(b for b in [*net.encoder.blocks, *net.decoder.blocks]
                               if type(b).__name__ in CHECKPOINTED_BLOCKS)
        return net
    n = len(config.channels)
    return VQVAE(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=config.channels,
        num_res_layers=config.num_res_blocks,
        num_res_channels=config.channels,
        # (stride, kernel, dilation, padding[, output_padding]): exact halving / doubling
        downsample_parameters=((2, 4, 1, 1),) * n,
        upsample_parameters=((2, 4, 1, 1, 0),) * n,
        num_embeddings=config.num_embeddings,
        embedding_dim=config.latent_channels,
        commitment_cost=config.commitment_cost,
    )


class CTAutoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.net = build_network(config)

    # ----------------------------------------------------------------- intensities
    def hu_to_input(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> [-1, 1] over the config's window (clipped)."""
        return hu_to_unit(hu, self.config.hu_window)

    def output_to_hu(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> HU (clipped to the window)."""
        return unit_to_hu(x.clamp(-1.0, 1.0), self.config.hu_window)

    # ----------------------------------------------------------------- raw networks
    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """(B,1,X,Y,Z), sizes divisible by 4 -> unscaled latent (B,C,X/4,Y/4,Z/4)."""
        if self.config.kind == "kl":
            z_mu, _ = self.net.encode(x)
            return z_mu
        z_q, _ = self.net.quantize(self.net.encode(x))
        return z_q

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode(z)

    def _use_tiles(self, n_voxels: int, tile_threshold: int | None) -> bool:
        threshold = self.config.tile_threshold if tile_threshold is None else tile_threshold
        return n_voxels > threshold

    # ----------------------------------------------------------------- public API
    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the spatial sizes up to multiples of `divisibility` with -1 (air)."""
        f = self.config.divisibility
        extra = [(-n) % f for n in x.shape[2:]]
        if not any(extra):
            return x
        # F.pad lists the last axis first: (Z_lo, Z_hi, Y_lo, Y_hi, X_lo, X_hi)
        return F.pad(x, (0, extra[2], 0, extra[1], 0, extra[0]), value=-1.0)

    def encode(
        self,
        x: torch.Tensor,
        scale: bool = True,
        tile_threshold: int | None = None,
        tile_size: int | None = None,
        tile_overlap: float | None = None,
    ) -> torch.Tensor:
        """(B,1,X,Y,Z) in [-1,1] -> latent (B,C,ceil(X/4),ceil(Y/4),ceil(Z/4)).

        scale=True returns (z - shift) * scaling_factor, the latent diffusion works on;
        scale=False the raw posterior mean / quantised code (what `fit_scaling` takes).
        Above `tile_threshold` voxels, encodes overlapping tiles of `tile_size`^3.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected x of shape (B, 1, X, Y, Z), got {tuple(x.shape)}")
        x = self.pad(x)
        if self._use_tiles(x.shape[2:].numel(), tile_threshold):
            f = self.config.divisibility
            z = tiled_apply(
                self._encode_raw,
                x,
                tile=tile_size or self.config.tile_size,
                overlap=self.config.tile_overlap if tile_overlap is None else tile_overlap,
                scale=1.0 / f,
                align=f,
            )
        else:
            z = self._encode_raw(x)
        if scale:
            z = (z - self.config.shift) * self.config.scaling_factor
        return z

    def decode(
        self,
        z: torch.Tensor,
        scale: bool = True,
        shape: tuple[int, int, int] | None = None,
        tile_threshold: int | None = None,
        tile_size: int | None = None,
        tile_overlap: float | None = None,
    ) -> torch.Tensor:
        """Latent (B,C,x,y,z) -> (B,1,4x,4y,4z), cropped to `shape` (X,Y,Z) when given.

        scale=True expects a scaled latent (as encode() returns) and undoes the scaling.
        """
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected z of shape (B, {self.config.latent_channels}, x, y, z), "
                f"got {tuple(z.shape)}"
            )
        if scale:
            z = z / self.config.scaling_factor + self.config.shift
        f = self.config.divisibility
        if self._use_tiles(z.shape[2:].numel() * f**3, tile_threshold):
            x = tiled_apply(
                self._decode_raw,
                z,
                tile=(tile_size or self.config.tile_size) // f,
                overlap=self.config.tile_overlap if tile_overlap is None else tile_overlap,
                scale=float(f),
            )
        else:
            x = self._decode_raw(z)
        if shape is not None:
            x = x[..., : shape[0], : shape[1], : shape[2]]
        return x

    def reconstruct(self, x: torch.Tensor, **tiling) -> torch.Tensor:
        """decode(encode(x)) cropped back to x's size."""
        return self.decode(self.encode(x, **tiling), shape=tuple(x.shape[2:]), **tiling)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass on a batch whose sizes are divisible by 4.

        KL: {"reconstruction", "z_mu", "z_sigma"} (decoded from a posterior sample).
        VQ: {"reconstruction", "quantization_loss"}.
        """
        if self.config.kind == "kl":
            reconstruction, z_mu, z_sigma = self.net(x)
            return {"reconstruction": reconstruction, "z_mu": z_mu, "z_sigma": z_sigma}
        reconstruction, q_loss = self.net(x)
        return {"reconstruction": reconstruction, "quantization_loss": q_loss}

    # ----------------------------------------------------------------- latent scaling
    @torch.no_grad()
    def fit_scaling(self, latents: torch.Tensor | list[torch.Tensor]) -> tuple[float, float]:
        """Fit shift = mean and scaling_factor = 1/std of raw latents; store in the config.

        latents: raw latents from encode(x, scale=False), a tensor or a list of tensors.
        Returns (shift, scaling_factor).
        """
        if isinstance(latents, (list, tuple)):
            latents = torch.cat([z.flatten() for z in latents])
        z = latents.double().flatten()
        shift = float(z.mean())
        std = float(z.std())
        if not std > 0:
            raise ValueError("cannot fit scaling: latents have zero variance")
        self.config = self.config.replace(shift=shift, scaling_factor=1.0 / std)
        return self.config.shift, self.config.scaling_factor

    # ----------------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors into `directory`, atomically.

        A new folder appears whole; into an existing one each file is renamed over its
        namesake, and other files there are kept (x2ct.fileio.atomic_dir).
        """
        state = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.state_dict().items()
        }
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            write_safetensors(tmp / WEIGHTS_NAME, state, {"format": "pt"})
            (tmp / CONFIG_NAME).write_text(self.config.to_json())
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> CTAutoencoder:
        """Rebuild from a folder written by save_pretrained (in eval mode)."""
        config_path, weights_path = check_model_dir(model_path(str(directory)))  # or a name
        model = cls(AutoencoderConfig.from_file(config_path))
        load_weights(model, weights_path)
        return model.to(device).eval()


def check_model_dir(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Paths of config.json and model.safetensors in `directory`, or a clear error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder not found: {directory}{not_found_hint()}")
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: not a saved CTAutoencoder")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
    return config_path, weights_path
