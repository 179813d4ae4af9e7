"""capkit: image captioning with pluggable frozen CNN encoders and three decoders."""

from adapt import __version__

__all__ = ["__version__"]
