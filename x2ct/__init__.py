"""x2ct: biplanar X-ray to 3D spine CT by latent diffusion.

The library lives in subpackages, one per concern (see DESIGN.md):
``x2ct.kernels``, ``x2ct.projector``, ``x2ct.data``, ``x2ct.autoencoder``,
``x2ct.diffusion``, ``x2ct.train`` and ``x2ct.eval``.
"""

__version__ = "0.1.0"
