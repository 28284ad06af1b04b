"""`AutoencoderConfig`: everything needed to rebuild a CT autoencoder, saved as config.json.

The config is the constructor (STYLE.md 5): `CTAutoencoder(config)` builds the network, and
`save_pretrained` writes the config beside the weights. It also carries the preprocessing
contract (spacing, HU window, orientation, divisibility) and the fitted latent scaling
(`shift`, `scaling_factor`), so a user of the latent never hard-codes a constant (STYLE.md 6).

Named sizes live in `AUTOENCODER_CONFIGS` and feed the command line's choices.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from x2ct.validation import build_config, check_range, parse_json, read_json_config

KINDS = ("kl", "vq")
# fields a saved config.json must state (the rest have defaults older files may lack)
REQUIRED_IN_FILE = ("kind", "channels", "latent_channels", "spacing", "hu_window",
                    "scaling_factor", "shift")
# bounds that keep a hostile config.json from allocating without end
MAX_CHANNELS, MAX_LEVELS, MAX_TILE = 4096, 8, 1024


@dataclass
class AutoencoderConfig:
    kind: str = "kl"  # "kl" (MONAI AutoencoderKL) or "vq" (MONAI VQVAE)
    # Network. KL: `channels` are the channel counts of the resolution levels; there are
    # len(channels) - 1 downsamplings by 2. VQ: one entry per downsampling by 2.
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 8  # C of the latent (B, C, X/4, Y/4, Z/4); VQ: the embedding dim
    num_res_blocks: int = 1  # residual blocks per level (VQ: residual layers per level)
    attention_levels: tuple[bool, ...] = (False, False, False)  # KL only, one per level
    with_nonlocal_attn: bool = False  # KL only: attention block at the deepest level
    norm_num_groups: int = 8  # GroupNorm groups (KL); every channel count divisible by it
    num_embeddings: int = 256  # VQ codebook size
    commitment_cost: float = 0.25  # VQ commitment weight (beta)
    # Latent scaling, fitted on training latents after training: encode() returns
    # (z - shift) * scaling_factor, which has about zero mean and unit variance.
    scaling_factor: float = 1.0
    shift: float = 0.0
    # Preprocessing contract: what a CT must look like before encode().
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm per voxel along X, Y, Z
    hu_window: tuple[float, float] = (-1000.0, 2000.0)  # HU mapped linearly to [-1, 1]
    orientation: str = "RAS"  # voxel axes order, DESIGN.md
    divisibility: int = 4  # spatial sizes must be multiples of this (inputs get padded)
    # Tiling: volumes with more voxels than tile_threshold are encoded/decoded tile by tile.
    tile_threshold: int = 96**3  # voxels
    tile_size: int = 64  # voxels per side of an image-space tile (multiple of divisibility)
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour
    # Activation checkpointing (KL only), block by block (x2ct.checkpointing): the forward
    # pass keeps each residual and resampling block's input, the backward pass recomputes
    # one block at a time. Saves memory in training and wherever the decoder is
    # differentiated (projection loss and guidance), costs about one more forward pass;
    # no effect without gradients.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs compare equal after a round trip.
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.hu_window = tuple(float(h) for h in self.hu_window)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.latent_channels <= 0:
            raise ValueError(f"latent_channels must be positive, got {self.latent_channels}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.kind == "kl":
            if any(c % self.norm_num_groups for c in self.channels):
                raise ValueError(
                    f"every channel count {self.channels} must be divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )
            if len(self.attention_levels) != len(self.channels):
                raise ValueError(
                    f"attention_levels {self.attention_levels} needs one entry per level "
                    f"of channels {self.channels}"
                )
        if self.gradient_checkpointing and self.kind != "kl":
            raise ValueError(
                "gradient_checkpointing needs kind 'kl' (the VQ-VAE's blocks are not wrapped)"
            )
        if self.num_embeddings < 2:
            raise ValueError(f"num_embeddings must be >= 2, got {self.num_embeddings}")
        if self.downsample_factor != self.divisibility:
            raise ValueError(
                f"{self.kind} with channels {self.channels} downsamples by "
                f"{self.downsample_factor}, but divisibility is {self.divisibility}"
            )
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive mm values, got {self.spacing}")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high: {self.hu_window}")
        if self.orientation != "RAS":
            raise ValueError(f"orientation must be 'RAS', got {self.orientation!r}")
        if self.scaling_factor <= 0:
            raise ValueError(f"scaling_factor must be positive, got {self.scaling_factor}")
        if self.tile_size <= 0 or self.tile_size % self.divisibility:
            raise ValueError(
                f"tile_size {self.tile_size} must be a positive multiple of {self.divisibility}"
            )
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if self.tile_threshold <= 0:
            raise ValueError(f"tile_threshold must be positive, got {self.tile_threshold}")
        check_range("number of channel levels", len(self.channels), 1, MAX_LEVELS)
        check_range("channels", max(self.channels), 1, MAX_CHANNELS)
        check_range("latent_channels", self.latent_channels, 1, MAX_CHANNELS)
        check_range("num_res_blocks", self.num_res_blocks, 1, 16)
        check_range("num_embeddings", self.num_embeddings, 2, 2**20)
        check_range("tile_size", self.tile_size, 1, MAX_TILE)
        for s in self.spacing:
            check_range("spacing (mm)", s, 0.05, 20.0)
        for name in ("scaling_factor", "shift", "commitment_cost", "tile_overlap"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")

    @property
    def downsample_factor(self) -> int:
        """Image size / latent size along each axis."""
        n_down = len(self.channels) - 1 if self.kind == "kl" else len(self.channels)
        return 2**n_down

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], source: str = "AutoencoderConfig", required=()
    ) -> AutoencoderConfig:
        """Checked field by field (types, then ranges); errors name ``source``."""
        return build_config(cls, d, source, required)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "AutoencoderConfig") -> AutoencoderConfig:
        return cls.from_dict(parse_json(text, source), source)

    @classmethod
    def from_file(cls, path) -> AutoencoderConfig:
        """A saved config.json, validated whole before anything is built (the file named)."""
        return cls.from_dict(read_json_config(path), str(path), REQUIRED_IN_FILE)

    def replace(self, **changes: Any) -> AutoencoderConfig:
        return dataclasses.replace(self, **changes)


def _kl(channels, latent_channels, num_res_blocks, norm_num_groups, **kw) -> AutoencoderConfig:
    return AutoencoderConfig(
        kind="kl",
        channels=channels,
        latent_channels=latent_channels,
        num_res_blocks=num_res_blocks,
        attention_levels=(False,) * len(channels),
        norm_num_groups=norm_num_groups,
        **kw,
    )


def _vq(channels, latent_channels, num_res_blocks, num_embeddings, **kw) -> AutoencoderConfig:
    return AutoencoderConfig(
        kind="vq",
        channels=channels,
        latent_channels=latent_channels,
        num_res_blocks=num_res_blocks,
        attention_levels=(False,) * len(channels),
        num_embeddings=num_embeddings,
        **kw,
    )


# Named sizes: "tiny" trains on a CPU in about an hour, "base" is meant for a GPU.
# "kl-base-1mm" is the clinical-resolution recipe: a 128^3 field of 1 mm voxels (128 mm,
# three to four lumbar vertebrae) -> an 8 x 32^3 latent. Fully convolutional (no
# attention), so crops, tiles and whole fields see the same network; checkpointed; a
# 128^3 field is decoded in one pass, larger CTs in 128^3 tiles.
AUTOENCODER_CONFIGS: dict[str, Any] = {
    "kl-tiny": lambda: _kl((16, 32, 64), 8, 1, 8),
    "kl-base": lambda: _kl((64, 128, 256), 8, 2, 32, with_nonlocal_attn=True),
    "kl-base-1mm": lambda: _kl((32, 64, 128), 8, 2, 16, spacing=(1.0, 1.0, 1.0),
                               gradient_checkpointing=True, tile_size=128,
                               tile_threshold=128**3),
    "vq-tiny": lambda: _vq((32, 64), 8, 1, 256),
    "vq-base": lambda: _vq((128, 256), 8, 2, 1024),
}


def get_config(name: str, **overrides: Any) -> AutoencoderConfig:
    """A registry config by name, with optional field overrides (validated again)."""
    if name not in AUTOENCODER_CONFIGS:
        raise ValueError(
            f"unknown autoencoder config {name!r}; choose from {list(AUTOENCODER_CONFIGS)}"
        )
    config = AUTOENCODER_CONFIGS[name]()
    return config.replace(**overrides) if overrides else config
