"""3D CT autoencoders (KL and VQ) with tiled encode/decode, save/load and a command line."""

from x2ct.autoencoder.config import AUTOENCODER_CONFIGS, AutoencoderConfig, get_config
from x2ct.autoencoder.model import CTAutoencoder

__all__ = ["AUTOENCODER_CONFIGS", "AutoencoderConfig", "CTAutoencoder", "get_config"]
