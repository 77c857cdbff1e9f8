"""`PanoVLMImageProcessor`: equirectangular panoramas -> the views of a crop strategy, ready for the vision tower."""


import math
from typing import Any

import numpy as np
import torch
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs

from configuration_panovlm.towers import SIGLIP_NORMALISATION
from configuration_panovlm.view_layout import (
    DEFAULT_ANYRES_MAX_PATCHES,
    DEFAULT_PITCH_LEVELS_DEG,
    ViewLayout,
    normalize_yaw,
    view_layout_of,
)

from .equirect import sample_views
from .image_loading import (
    PanoramaImageError,
    PanoramaInput,
    is_unit_range_image,
    load_panorama,
)


# Keys HF writes into a saved preprocessor_config.json besides the settings themselves.
_HF_BOOKKEEPING_KEYS = ("image_processor_type", "processor_class", "auto_map", "feature_extractor_type")
# Per-call overrides; the geometry settings are fixed at construction because they decide the view count.
_CALL_OVERRIDES = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
_GEOMETRY_SETTINGS = (
    "crop_strategy",
    "image_size",
    "fov_deg",
    "overlap_ratio",
    "pitch_levels_deg",
    "vertical_crop_ratio",
    "anyres_max_patches",
    "aspect_ratio_tolerance",
    "max_erp_width",
    "view_render_size",
    "reduced_decoding",
)


class PanoVLMImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of `PanoVLMImageProcessor` (its settings), for `ProcessorMixin` kwargs routing."""

    crop_strategy: str
    image_size: int
    fov_deg: float | int
    overlap_ratio: float | int
    pitch_levels_deg: list[float] | tuple[float, ...]
    vertical_crop_ratio: float | int
    anyres_max_patches: int
    aspect_ratio_tolerance: float | int
    max_erp_width: int | None
    view_render_size: int | None
    reduced_decoding: bool


class PanoVLMImageProcessor(BaseImageProcessor):
    r"""Turns equirectangular panoramas (ERP, 2:1) into the square views of a crop strategy.

    The views are those of `build_view_layout(crop_strategy, fov_deg, overlap_ratio, pitch_levels_deg,
    vertical_crop_ratio, anyres_max_patches)` (configuration_panovlm.view_layout), sampled seam-correctly by `processing_panovlm.equirect.sample_views`:
    perspective views match `py360convert.e2p` (bilinear), ERP crops wrap across the +/-180 degree seam, and the
    whole-panorama views (`resize`, the letterboxed global view of `anyres_e2p`) use an antialiased resize. 8-bit
    panoramas are sampled straight from their uint8 pixels (never converted to float as a whole). Each view is
    then rescaled and normalised.

    Args:
        crop_strategy (`str`): one of `resize`, `e2p`, `anyres_e2p`, `cubemap`, `sliding_window`, `anyres`,
            `anyres_max`.
        image_size (`int`): side `S` of each square view (the vision tower's input size).
        fov_deg (`float`): horizontal (= vertical, unless cropped) field of view of each view, in degrees.
        overlap_ratio (`float`): requested overlap of neighbouring views, in [0, 1).
        pitch_levels_deg (`list[float]`): pitch of each row of views, top row first; default `[0.0]` (the horizon).
        vertical_crop_ratio (`float`): narrows perspective views vertically (1.0: square; 0.9: PanoLLaVA's e2p).
        anyres_max_patches (`int`): patch budget of `anyres` / `anyres_max`.
        do_rescale (`bool`): multiply by `rescale_factor` (maps 0..255 to [0, 1]).
        rescale_factor (`float`): defaults to 1/255.
        do_normalize (`bool`): subtract `image_mean` and divide by `image_std` per channel.
        image_mean, image_std (`list[float]`): default SigLIP's (0.5, 0.5, 0.5).
        aspect_ratio_tolerance (`float`): largest relative deviation of width / height from 2 that is accepted.
        reduced_decoding (`bool`): decode JPEG files at the smallest DCT scale (1/2, 1/4, 1/8 of the width) that still
            has the resolution the views need, `erp_width_needed` pixels across (a 384-pixel view over 90 degrees
            needs 1536): a 4096- or 8192-wide JPEG panorama then costs a fraction of its full decode. Applies to JPEG
            files, URLs and bytes, not to other formats or to images passed already decoded (PIL, arrays).
        max_erp_width (`int`, *optional*): shrink wider panoramas to this width (area filter) before sampling
            the perspective / crop views; `None` (default) samples the original pixels.
        view_render_size (`int`, *optional*): sample the perspective / crop views at this size (>= `image_size`),
            then shrink them to `image_size` with an antialiased filter (supersampling; PanoLLaVA's anyres_e2p
            rendered its tiles at 672); `None` (default) samples them at `image_size`.

    Inputs: one panorama, a list of them, one list per prompt (nested, as chat templates pass them) or a 4-D array /
    tensor holding a batch; each a PIL image, numpy array, torch tensor, file path, URL, image bytes or
    `datasets.Image` value, read by `load_panorama` (the library's one image loader). 8- and 16-bit images are on the 0..255
    scale; float arrays / tensors must be in [0, 1] and need `do_rescale=False`. Panoramas of different sizes can
    share a batch.

    Returns a `BatchFeature` with:
        * `pixel_values`: `(batch, views, 3, S, S)` float32, views in layout order (global view first, then the
          strip from left to right). Letterbox bars are 0 before normalisation.
        * `view_yaw_deg`: `(batch, views)` view centre yaw in degrees, in (-180, 180], positive = right of the
          ERP centre column.
        * `view_pitch_deg`: `(batch, views)` view centre pitch in degrees, positive = up.
        * `view_fov_deg`: `(batch, views)` horizontal field of view of each view in degrees (360 for whole-panorama
          views).
        * `view_vfov_deg`: `(batch, views)` vertical field of view of each view in degrees (180 for whole-panorama
          views).

    Call-time overrides: `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std`;
    `return_tensors` (`"pt"`, `"np"` or `None` = torch tensors) and `device` (where sampling runs; default: the
    input's device, CPU for PIL / numpy / paths).

    Example:

    ```python
    >>> processor = PanoVLMImageProcessor(crop_strategy="anyres_e2p", image_size=384, fov_deg=90.0, overlap_ratio=0.5)
    >>> processor("panorama.jpg", return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 9, 3, 384, 384])
    ```
    """

    valid_kwargs = PanoVLMImageProcessorKwargs
    # transformers' image processors resize to `size`; here the views are sampled at `image_size`, fixed at
    # construction because the model's token count depends on it, so there is no `size` setting.
    size = None
    model_input_names = ["pixel_values", "view_yaw_deg", "view_pitch_deg", "view_fov_deg", "view_vfov_deg"]

    def __init__(
        self,
        crop_strategy: str = "anyres_e2p",
        image_size: int = 384,
        fov_deg: float = 90.0,
        overlap_ratio: float = 0.5,
        pitch_levels_deg: list[float] | tuple[float, ...] = DEFAULT_PITCH_LEVELS_DEG,
        vertical_crop_ratio: float = 1.0,
        anyres_max_patches: int = DEFAULT_ANYRES_MAX_PATCHES,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: list[float] | tuple[float, ...] | None = None,
        image_std: list[float] | tuple[float, ...] | None = None,
        aspect_ratio_tolerance: float = 0.01,
        max_erp_width: int | None = None,
        view_render_size: int | None = None,
        reduced_decoding: bool = True,
        **kwargs,
    ):
        unknown = set(kwargs) - set(_HF_BOOKKEEPING_KEYS)
        if unknown:
            raise TypeError(f"PanoVLMImageProcessor got unexpected keyword arguments {sorted(unknown)}")
        # auto_map must survive a save / load round trip; the other bookkeeping keys are rewritten by HF.
        super().__init__(**{key: value for key, value in kwargs.items() if key == "auto_map"})
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2:
            raise ValueError(f"image_size must be an integer >= 2, got {image_size!r}")
        if not 0.0 <= aspect_ratio_tolerance < 0.5:
            raise ValueError(f"aspect_ratio_tolerance must be in [0, 0.5), got {aspect_ratio_tolerance}")
        if max_erp_width is not None and (not isinstance(max_erp_width, int) or max_erp_width < 4):
            raise ValueError(f"max_erp_width must be an integer >= 4 or None, got {max_erp_width!r}")
        self.crop_strategy = crop_strategy
        self.image_size = image_size
        self.fov_deg = float(fov_deg)
        self.overlap_ratio = float(overlap_ratio)
        self.pitch_levels_deg = _pitch_levels(pitch_levels_deg)
        self.vertical_crop_ratio = float(vertical_crop_ratio)
        self.anyres_max_patches = anyres_max_patches
        self.aspect_ratio_tolerance = float(aspect_ratio_tolerance)
        self.max_erp_width = max_erp_width
        self.reduced_decoding = bool(reduced_decoding)
        if view_render_size is not None and (
            isinstance(view_render_size, bool) or not isinstance(view_render_size, int) or view_render_size < image_size
        ):
            raise ValueError(f"view_render_size must be an integer >= image_size ({image_size}) or None, got {view_render_size!r}")
        self.view_render_size = view_render_size
        _ = self.view_layout  # building it raises ValueError for impossible settings
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _channel_stats(SIGLIP_NORMALISATION[0] if image_mean is None else image_mean, "image_mean")
        self.image_std = _channel_stats(SIGLIP_NORMALISATION[1] if image_std is None else image_std, "image_std")

    @property
    def view_layout(self) -> ViewLayout:
        """The views every panorama is turned into (`build_view_layout` of this processor's settings)."""
        return view_layout_of(self)

    @property
    def erp_width_needed(self) -> int:
        """The equirectangular width at which the views sample at least one panorama pixel per view pixel:
        `360 * side / fov` for the narrowest field of view (horizontal or vertical) of a view sampled `side` pixels
        across (`view_render_size` or `image_size`); whole-panorama views need only `image_size`."""
        side = self.view_render_size or self.image_size
        widths = [
            self.image_size if view.hfov_deg >= 360.0 and view.vfov_deg >= 180.0 else side * 360.0 / min(view.hfov_deg, view.vfov_deg)
            for view in self.view_layout.views
        ]
        return math.ceil(max(widths))

    def load(self, image: PanoramaInput) -> torch.Tensor:
        """`load_panorama` as this processor reads panoramas (8-bit kept uint8, JPEG decoded at a reduced scale when
        `reduced_decoding`): every entry point that prepares views (training's collator included) loads through it,
        so they all see the same pixels."""
        min_width = self.erp_width_needed if self.reduced_decoding else None
        return load_panorama(image, self.aspect_ratio_tolerance, keep_uint8=True, min_width=min_width)

    def to_dict(self) -> dict[str, Any]:
        # BaseImageProcessor.to_dict drops settings whose value is None (max_erp_width); every setting is kept.
        return ImageProcessingMixin.to_dict(self)

    def preprocess(
        self,
        images: PanoramaInput | list[PanoramaInput] | tuple[PanoramaInput, ...],
        return_tensors: str | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Panoramas -> `BatchFeature` of views and view metadata; see the class docstring."""
        options = self._resolve_call_options(kwargs)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        images, _ = flatten_panoramas(images)
        if not images:
            raise ValueError("images is empty: pass one panorama, a list of them, or one list per prompt")

        panoramas = []
        for index, image in enumerate(images):
            if options["do_rescale"] and is_unit_range_image(image):
                raise PanoramaImageError(
                    f"images[{index}] is a float image, which must already be in [0, 1]; rescaling it by "
                    f"{options['rescale_factor']:g} again would darken it. Pass do_rescale=False (or uint8 data)."
                )
            # 8-bit panoramas stay uint8 (often a view of the input): only the sampled values become float.
            panorama = self.load(image)
            panoramas.append(panorama if device is None else panorama.to(device))

        pixel_values = self._sample(panoramas)
        pixel_values = self._rescale_and_normalize(pixel_values, **options)

        layout = self.view_layout
        metadata = {
            "view_yaw_deg": [normalize_yaw(view.yaw_deg) for view in layout.views],
            "view_pitch_deg": [view.pitch_deg for view in layout.views],
            "view_fov_deg": [view.hfov_deg for view in layout.views],
            "view_vfov_deg": [view.vfov_deg for view in layout.views],
        }
        data = {"pixel_values": pixel_values}
        for key, values in metadata.items():
            row = torch.tensor(values, dtype=torch.float32, device=pixel_values.device)
            data[key] = row.expand(len(panoramas), -1).clone()
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _resolve_call_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        options = {name: getattr(self, name) for name in _CALL_OVERRIDES}
        for key, value in kwargs.items():
            if key in _CALL_OVERRIDES:
                if value is not None:
                    options[key] = value
            elif key in _GEOMETRY_SETTINGS:
                if key == "pitch_levels_deg" and value is not None:
                    value = _pitch_levels(value)
                if value is not None and value != getattr(self, key):
                    raise ValueError(
                        f"{key}={value!r} differs from this processor's {key}={getattr(self, key)!r}; the view "
                        "geometry is fixed at construction (build another PanoVLMImageProcessor)"
                    )
            elif value is not None:
                raise ValueError(
                    f"PanoVLMImageProcessor does not support {key!r}; per-call options are {list(_CALL_OVERRIDES)}, "
                    "return_tensors and device"
                )
        options["image_mean"] = _channel_stats(options["image_mean"], "image_mean")
        options["image_std"] = _channel_stats(options["image_std"], "image_std")
        return options

    def _sample(self, panoramas: list[torch.Tensor]) -> torch.Tensor:
        """`(3, H_i, W_i)` panoramas -> `(batch, views, 3, S, S)` float32, one sampler call per panorama.

        The sampler loops over a batch anyway; calling it per panorama spares stacking (copying) the panoramas.
        """
        if len({panorama.device for panorama in panoramas}) > 1:
            raise ValueError("panoramas are on different devices; pass device=... to sample them in one place")
        layout = self.view_layout
        views = [
            sample_views(panorama, layout, self.image_size, self.max_erp_width, self.view_render_size)
            for panorama in panoramas
        ]
        return torch.cat(views) if len(views) > 1 else views[0]

    @staticmethod
    def _rescale_and_normalize(
        pixel_values: torch.Tensor,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: list[float],
        image_std: list[float],
    ) -> torch.Tensor:
        scale = torch.full((3,), rescale_factor if do_rescale else 1.0, dtype=torch.float64)
        shift = torch.zeros(3, dtype=torch.float64)
        if do_normalize:
            mean = torch.tensor(image_mean, dtype=torch.float64)
            std = torch.tensor(image_std, dtype=torch.float64)
            # (x * factor - mean) / std as one multiply-add per pixel.
            scale, shift = scale / std, -mean / std
        scale = scale.to(pixel_values.device, torch.float32).view(3, 1, 1)
        shift = shift.to(pixel_values.device, torch.float32).view(3, 1, 1)
        return torch.addcmul(shift, pixel_values, scale, out=pixel_values)  # in place: the views are ours


def _pitch_levels(levels) -> list[float]:
    """Pitch levels as a list of floats (what `preprocessor_config.json` round-trips); checked by the layout."""
    if not isinstance(levels, (list, tuple)):
        raise ValueError(f"pitch_levels_deg must be a list of angles in degrees, got {levels!r}")
    return [float(level) if type(level) is int else level for level in levels]


def _channel_stats(values: float | list[float] | tuple[float, ...], name: str) -> list[float]:
    """Per-channel mean / std as a list of 3 floats (a single number applies to every channel)."""
    if isinstance(values, (int, float)):
        values = [values] * 3
    values = [float(value) for value in values]
    if len(values) != 3:
        raise ValueError(f"{name} needs 3 values (RGB), got {values}")
    if name == "image_std" and min(values) <= 0:
        raise ValueError(f"image_std must be positive, got {values}")
    return values


def flatten_panoramas(images) -> tuple[list, list[int] | None]:
    """One panorama, a list of them, a 4-D batch, or one list per prompt -> (flat list, panoramas per prompt or
    None when not given per prompt)."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images), None
    if not isinstance(images, (list, tuple)):
        return [images], None
    if any(isinstance(item, (list, tuple)) for item in images):
        flat, per_prompt = [], []
        for index, item in enumerate(images):
            if not isinstance(item, (list, tuple)):
                raise ValueError(
                    f"images[{index}] is a single panorama in a list of lists: give one list of panoramas per prompt "
                    "(possibly empty), or a flat list with one panorama per placeholder"
                )
            for inner, panorama in enumerate(item):
                if isinstance(panorama, (list, tuple)):
                    raise ValueError(f"images[{index}][{inner}] is a list: nest panoramas at most one level deep")
            flat.extend(item)
            per_prompt.append(len(item))
        return flat, per_prompt
    return list(images), None


__all__ = ["PanoVLMImageProcessor", "PanoVLMImageProcessorKwargs", "flatten_panoramas"]
