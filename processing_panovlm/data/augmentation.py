"""Training-time augmentation of equirectangular panoramas: a random yaw roll and colour jitter.

A horizontal circular shift of an ERP's columns is an exact rotation of the camera about the vertical axis, so it
augments without distorting anything (PanoLLaVA: probability 0.5, up to 30 % of the width). Colour jitter follows
PanoLLaVA too (brightness, contrast, saturation 0.2, hue 0.1). Both change what a caption may say: a roll changes
which direction is "front", a hue shift changes colour names. Turn them off for data whose text depends on them.

Randomness is a pure function of `(seed, epoch, row)`, so a resumed or distributed run draws exactly the same
augmentation for a sample as an uninterrupted single-process run. Evaluation data is never augmented.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PanoramaAugmentation:
    """Random yaw roll and colour jitter for `(3, H, W)` panoramas with values in [0, 1].

    Args:
        yaw_roll_probability: chance of rolling the columns.
        max_roll_fraction: the roll is uniform in +/- this fraction of the width.
        brightness, contrast, saturation: jitter factors drawn uniformly in [1 - x, 1 + x] (0 disables).
        hue: hue shift drawn uniformly in [-x, x] turns of the colour wheel (0 disables; at most 0.5).
        seed: base seed.
    """

    yaw_roll_probability: float = 0.5
    max_roll_fraction: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.yaw_roll_probability <= 1.0 or not 0.0 <= self.max_roll_fraction <= 0.5:
            raise ValueError("yaw_roll_probability must be in [0, 1] and max_roll_fraction in [0, 0.5]")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0.0 <= self.hue <= 0.5:
            raise ValueError("brightness, contrast, saturation must be >= 0 and hue in [0, 0.5]")

    def __call__(self, panorama: torch.Tensor, row: int, epoch: int = 0) -> torch.Tensor:
        """Augment one `(3, H, W)` panorama in [0, 1]; `row` identifies the sample, `epoch` the pass over data."""
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, row)) & 0x7FFFFFFF)
        uniform = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
        width = panorama.shape[-1]
        if uniform[0] < self.yaw_roll_probability:
            shift = round((2 * uniform[1] - 1) * self.max_roll_fraction * width)
            panorama = panorama.roll(shift, dims=-1)
        if self.brightness:
            panorama = panorama * (1 + self.brightness * (2 * uniform[2] - 1))
        if self.contrast:
            mean = _grey(panorama).mean()
            panorama = mean + (panorama - mean) * (1 + self.contrast * (2 * uniform[3] - 1))
        if self.saturation:
            grey = _grey(panorama)[None]
            panorama = grey + (panorama - grey) * (1 + self.saturation * (2 * uniform[4] - 1))
        panorama = panorama.clamp(0.0, 1.0)
        if self.hue:
            panorama = _shift_hue(panorama, self.hue * (2 * uniform[5] - 1))
        return panorama


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of `(3, H, W)` -> `(H, W)`."""
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _shift_hue(rgb: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate the hue of `(3, H, W)` RGB in [0, 1] by `turns` of the colour wheel (through HSV)."""
    maximum, argmax = rgb.max(dim=0)
    minimum = rgb.min(dim=0).values
    chroma = maximum - minimum
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = rgb
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6, torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + turns) % 1.0
    # HSV -> RGB with value = maximum, saturation = chroma / maximum.
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=rgb.dtype)[:, None, None] + hue[None] * 6) % 6
    weight = torch.clamp(torch.minimum(k, 4 - k), 0.0, 1.0)
    return maximum[None] - chroma[None] * weight


__all__ = ["PanoramaAugmentation"]
