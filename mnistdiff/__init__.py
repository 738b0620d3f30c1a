"""mnistdiff: diffusion models from scratch on MNIST — UNet, DDPM, DDIM, VAE, latent diffusion, evaluation.

The package holds the heavy code of the course book; the notebooks in ``notebooks/`` teach each piece
and then import it from here. See ``python -m mnistdiff --help`` for the command line.
"""

__version__ = "0.1.0"
