"""fa_adapt: adapt a 4-bit quantized Gemma chat model to Persian conversation."""

from adapt import __version__

__all__ = ["__version__"]
