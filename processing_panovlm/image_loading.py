"""Loading and validating equirectangular panoramas.

`load_panorama` turns a PIL image, a numpy array, a torch tensor or a file path into a `(3, H, W)` float32 tensor
(or, on request, keeps 8-bit images uint8) and rejects, with a `PanoramaImageError` naming the problem and the
input, anything that is not a usable 2:1 panorama. It converts only what has one obvious meaning (listed in its
docstring) and never silently fixes anything else.
"""

from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


PanoramaInput = Union[Image.Image, np.ndarray, torch.Tensor, str, os.PathLike]

# 1: grey, 2: grey + alpha, 3: RGB, 4: RGBA.
CHANNEL_COUNTS = (1, 2, 3, 4)
MIN_HEIGHT = 2
# PIL modes whose conversion to 8-bit RGB is unambiguous; alpha is dropped, not composited.
_PIL_MODES_TO_RGB = ("1", "L", "P", "PA", "LA", "RGBA", "RGBX", "CMYK", "YCbCr")
_PIL_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_INTEGER_DTYPES = (torch.uint8, torch.uint16)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NUMPY_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")
# 65535 / 257 = 255: maps the 16-bit range exactly onto the 8-bit one.
_UINT16_TO_UINT8 = 257.0


class PanoramaImageError(ValueError):
    """A panorama that cannot be used: unreadable, truncated or corrupt, too large, not 2:1, or with invalid values."""


def load_panorama(
    image: PanoramaInput, aspect_ratio_tolerance: float = 0.01, *, keep_uint8: bool = False
) -> torch.Tensor:
    """Load and validate one equirectangular panorama.

    Args:
        image: a PIL image; a numpy array or torch tensor shaped `(H, W)`, `(H, W, C)` or `(C, H, W)` with
            `C` in 1..4 (numpy arrays are read channels-last and tensors channels-first when both readings are
            possible); or the path (`str` / `os.PathLike`) of an image file.
        aspect_ratio_tolerance: largest accepted relative deviation of `W / H` from 2.
        keep_uint8: return 8-bit images as uint8 instead of float32 (the panorama is then 4x smaller, and
            `sample_views` reads it without converting it as a whole). The result is then often a view of
            `image` (a channels-last view of an `(H, W, 3)` array, for instance), so treat it as read-only.

    Returns:
        `(3, H, W)` float32 tensor (on the input tensor's device, else on the CPU) in the input's value range:
        0..255 for 8-bit and 16-bit images, [0, 1] for floating point arrays and tensors; uint8 for 8-bit images
        with `keep_uint8=True`.

    Conversions (the only ones made):
        * grey (PIL "1"/"L", 2-D arrays, one channel) is replicated to RGB; PIL "1" becomes 0 / 255;
        * palette, CMYK and YCbCr PIL images are converted to RGB; EXIF orientation is applied to PIL images;
        * alpha (RGBA, LA, PA, 2- and 4-channel arrays) is discarded, not composited onto a background;
        * 16-bit integers (PIL "I;16*", uint16 arrays) are divided by 257 onto the 8-bit range, so a
          `rescale_factor` of 1/255 still maps them to [0, 1].

    Floating point input must already be in [0, 1] (the convention of `ToTensor`-style images); it is kept as is,
    so the image processor must not rescale it again (`do_rescale=False`).

    Raises:
        PanoramaImageError: missing, unreadable, truncated or corrupt files; images over
            `PIL.Image.MAX_IMAGE_PIXELS` (decompression-bomb protection); empty, 1-pixel-high or non-2:1 images;
            unsupported PIL modes, dtypes or channel counts; NaN/inf or out-of-range float values.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        with _open_image_file(path) as opened:
            return _pil_to_tensor(opened, path, aspect_ratio_tolerance, keep_uint8)
    if isinstance(image, Image.Image):
        source = getattr(image, "filename", "") or f"PIL image ({image.mode}, {image.width}x{image.height})"
        return _pil_to_tensor(image, source, aspect_ratio_tolerance, keep_uint8)
    if isinstance(image, np.ndarray):
        source = f"numpy array of shape {image.shape} and dtype {image.dtype}"
        if image.dtype.name not in _NUMPY_DTYPES:
            raise PanoramaImageError(
                f"{source}: unsupported dtype; pass uint8 (0..255), uint16 (0..65535) or float in [0, 1]"
            )
        if keep_uint8 and image.dtype == np.uint8 and image.flags.writeable and image.flags.c_contiguous:
            tensor = torch.from_numpy(image)  # no copy: the caller asked for a read-only view
        else:
            # A copy, so the result never aliases the caller's (possibly read-only or big-endian) memory.
            tensor = torch.tensor(image.astype(image.dtype.newbyteorder("="), copy=False))
        return _tensor_to_panorama(tensor, source, aspect_ratio_tolerance, channels_first=False, keep_uint8=keep_uint8)
    if isinstance(image, torch.Tensor):
        source = f"torch tensor of shape {tuple(image.shape)} and dtype {image.dtype}"
        tensor = image.detach()
        return _tensor_to_panorama(tensor, source, aspect_ratio_tolerance, channels_first=True, keep_uint8=keep_uint8)
    raise PanoramaImageError(
        f"unsupported panorama type {type(image).__name__}: pass a PIL image, numpy array, torch tensor or file path"
    )


def is_unit_range_image(image: PanoramaInput) -> bool:
    """Whether `load_panorama(image)` returns values in [0, 1] (float arrays / tensors) rather than 0..255."""
    if isinstance(image, np.ndarray):
        return image.dtype.kind == "f"
    return isinstance(image, torch.Tensor) and image.is_floating_point()


def check_panorama_size(height: int, width: int, source: str, aspect_ratio_tolerance: float = 0.01) -> None:
    """Raise `PanoramaImageError` unless an `height` x `width` image can be an equirectangular panorama (2:1)."""
    if height == 0 or width == 0:
        raise PanoramaImageError(f"{source}: the image is empty ({width}x{height} pixels)")
    if height < MIN_HEIGHT:
        raise PanoramaImageError(f"{source}: {width}x{height} pixels is too small; a panorama needs >= 2 rows")
    ratio = width / height
    if abs(ratio - 2.0) > 2.0 * aspect_ratio_tolerance:
        raise PanoramaImageError(
            f"{source}: size {width}x{height} (width:height = {ratio:.4g}:1) is not an equirectangular panorama; "
            f"expected a 2:1 width:height ratio within a relative tolerance of {aspect_ratio_tolerance:g} "
            f"(e.g. {2 * height}x{height})"
        )


def _open_image_file(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise PanoramaImageError(f"panorama file not found: {path!r}")
    if os.path.isdir(path):
        raise PanoramaImageError(f"{path!r} is a directory, not an image file")
    try:
        # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS; an image that large is refused all the same.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PanoramaImageError(
            f"{path!r}: {err} If you trust this file, raise the limit, e.g. `PIL.Image.MAX_IMAGE_PIXELS = "
            "200_000_000`, or set it to None to disable the check."
        ) from err
    except UnidentifiedImageError as err:
        raise PanoramaImageError(f"{path!r} is not an image file PIL can read ({err})") from err
    except OSError as err:
        raise PanoramaImageError(f"cannot open panorama file {path!r}: {err}") from err


def _pil_to_tensor(
    image: Image.Image, source: str, aspect_ratio_tolerance: float, keep_uint8: bool
) -> torch.Tensor:
    # Checked before decoding, so an oversized file is never decompressed.
    limit = Image.MAX_IMAGE_PIXELS
    num_pixels = image.width * image.height
    if limit is not None and num_pixels > limit:
        raise PanoramaImageError(
            f"{source}: {num_pixels} pixels ({image.width}x{image.height}) exceeds PIL.Image.MAX_IMAGE_PIXELS = "
            f"{limit} (decompression-bomb protection). If you trust this image, raise the limit, e.g. "
            f"`PIL.Image.MAX_IMAGE_PIXELS = {num_pixels}`, or set it to None to disable the check."
        )
    try:
        image.load()
    except (OSError, SyntaxError) as err:
        # PIL reports truncated data as OSError ("image file is truncated") and bad chunks (e.g. PNG CRC) as
        # SyntaxError; neither is recoverable without guessing the missing pixels.
        raise PanoramaImageError(f"{source}: the image file is truncated or corrupt ({err})") from err
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)

    if image.mode in _PIL_16_BIT_MODES:
        array = np.asarray(image)
        array = array.astype(array.dtype.newbyteorder("="), copy=False)
    elif image.mode == "RGB":
        array = np.asarray(image)
    elif image.mode in _PIL_MODES_TO_RGB:
        array = np.asarray(image.convert("RGB"))
    else:
        raise PanoramaImageError(
            f"{source}: unsupported PIL mode {image.mode!r}; convert it to 'RGB' (8-bit) first, or pass a uint16 "
            "or float array"
        )
    tensor = torch.tensor(array)
    return _tensor_to_panorama(tensor, source, aspect_ratio_tolerance, channels_first=False, keep_uint8=keep_uint8)


def _to_channels_first(tensor: torch.Tensor, source: str, channels_first: bool) -> torch.Tensor:
    if tensor.dim() == 2:
        return tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise PanoramaImageError(f"{source}: expected 2 or 3 dimensions, (H, W), (H, W, C) or (C, H, W)")
    first_is_channels = tensor.shape[0] in CHANNEL_COUNTS
    last_is_channels = tensor.shape[-1] in CHANNEL_COUNTS
    if first_is_channels and (channels_first or not last_is_channels):
        return tensor
    if last_is_channels:
        return tensor.permute(2, 0, 1)
    raise PanoramaImageError(
        f"{source}: unsupported channel count; expected 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels "
        "first or last"
    )


def _tensor_to_panorama(
    tensor: torch.Tensor, source: str, aspect_ratio_tolerance: float, channels_first: bool, keep_uint8: bool
) -> torch.Tensor:
    if tensor.dtype not in _INTEGER_DTYPES + _FLOAT_DTYPES:
        raise PanoramaImageError(
            f"{source}: unsupported dtype {tensor.dtype}; pass uint8 (0..255), uint16 (0..65535) or float in [0, 1]"
        )
    if tensor.numel() == 0:
        raise PanoramaImageError(f"{source}: the image is empty")
    tensor = _to_channels_first(tensor, source, channels_first)
    check_panorama_size(tensor.shape[1], tensor.shape[2], source, aspect_ratio_tolerance)

    num_channels = tensor.shape[0]
    if num_channels in (1, 2):
        tensor = tensor[:1].expand(3, -1, -1)
    elif num_channels == 4:
        tensor = tensor[:3]

    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all():
            raise PanoramaImageError(f"{source}: the image contains NaN or infinite values")
        low, high = tensor.min().item(), tensor.max().item()
        if low < 0.0 or high > 1.0:
            raise PanoramaImageError(
                f"{source}: float values span [{low:.4g}, {high:.4g}] but float panoramas must lie in [0, 1]; "
                "pass uint8 for 0..255 data, or divide by 255 first"
            )
    if keep_uint8 and tensor.dtype == torch.uint8:
        return tensor
    result = tensor.to(torch.float32, copy=True).contiguous()
    if tensor.dtype == torch.uint16:
        result /= _UINT16_TO_UINT8
    return result
