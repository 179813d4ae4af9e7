"""capkit: image captioning with pluggable frozen CNN encoders and three decoders.

Importing capkit is cheap: torch is imported only when a model is used (`load_captioner`).
"""

from adapt import __version__

__all__ = ["__version__", "load_captioner"]


def __getattr__(name: str):
    if name == "load_captioner":
        from capkit.runs import load_captioner

        return load_captioner
    raise AttributeError(f"module 'capkit' has no attribute {name!r}")
