"""Loading and validating equirectangular panoramas: the one function every entry point reads images with.

`load_panorama` turns a PIL image, a numpy array, a torch tensor, a file path (`str` or `os.PathLike`), an http(s)
URL, a `data:image/...;base64,` URI, raw bytes or a `datasets.Image` value (`{"bytes": ..., "path": ...}`) into a
`(3, H, W)` tensor, and rejects, with a `PanoramaImageError` naming the problem and the source, anything that is not
a usable 2:1 panorama. The processor, the image processor, the training collator, evaluation, inference and the data
scan all read images through it (the scan through `probe_panorama`, its header-only twin), so every entry point
sees the same pixels. It converts only what has one obvious meaning (listed in its docstring) and never silently
fixes anything else.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


PanoramaInput = Union[Image.Image, np.ndarray, torch.Tensor, str, os.PathLike, bytes, Mapping]

REMOTE_PREFIXES = ("http://", "https://")
DATA_URI_PREFIX = "data:image/"
URL_TIMEOUT_SECONDS = 30.0
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
# EXIF orientations 5-8 rotate by 90 degrees: the stored width and height swap when the orientation is applied.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class PanoramaImageError(ValueError):
    """A panorama that cannot be used. `reason` is its kind (one of `REASONS`), the message names the source."""

    def __init__(self, message: str, reason: str = "unusable image"):
        super().__init__(message)
        self.reason = reason


# The kinds of problem `PanoramaImageError.reason` takes (data reports count rows per kind).
NOT_FOUND = "image file not found"
NOT_AN_IMAGE = "not an image"
CORRUPT = "truncated or corrupt image"
BOMB = "decompression bomb"
NOT_PANORAMA = "not a 2:1 panorama"
UNREACHABLE = "image URL cannot be read"
UNSUPPORTED = "unsupported image format"
REASONS = (NOT_FOUND, NOT_AN_IMAGE, CORRUPT, BOMB, NOT_PANORAMA, UNREACHABLE, UNSUPPORTED)


def is_remote(location: object) -> bool:
    """Whether `location` is an http(s) URL (the one place this is decided)."""
    return isinstance(location, str) and location.startswith(REMOTE_PREFIXES)


def describe_source(image: PanoramaInput) -> str:
    """How error messages name an input: the path or URL, else its type and shape."""
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        return repr(text[:40] + "...") if text.startswith(DATA_URI_PREFIX) else repr(text)
    if isinstance(image, Mapping):
        return repr(image.get("path")) if image.get("path") else f"datasets.Image bytes ({len(image.get('bytes') or b'')} B)"
    if isinstance(image, (bytes, bytearray)):
        return f"image bytes ({len(image)} B)"
    if isinstance(image, Image.Image):
        return repr(image.filename) if getattr(image, "filename", "") else (
            f"PIL image ({image.mode}, {image.width}x{image.height})"
        )
    if isinstance(image, np.ndarray):
        return f"numpy array of shape {image.shape} and dtype {image.dtype}"
    if isinstance(image, torch.Tensor):
        return f"torch tensor of shape {tuple(image.shape)} and dtype {image.dtype}"
    return type(image).__name__


def load_panorama(
    image: PanoramaInput, aspect_ratio_tolerance: float = 0.01, *, keep_uint8: bool = False, min_width: int | None = None
) -> torch.Tensor:
    """Load and validate one equirectangular panorama.

    Args:
        image: a PIL image; a numpy array or torch tensor shaped `(H, W)`, `(H, W, C)` or `(C, H, W)` with
            `C` in 1..4 (numpy arrays are read channels-last and tensors channels-first when both readings are
            possible); the path (`str` / `os.PathLike`) of an image file; an http(s) URL; a
            `data:image/...;base64,...` URI; the bytes of an image file; or a `datasets.Image` value
            (`{"bytes": ..., "path": ...}`, what a `datasets.Image(decode=False)` column holds).
        aspect_ratio_tolerance: largest accepted relative deviation of `W / H` from 2.
        keep_uint8: return 8-bit images as uint8 instead of float32 (the panorama is then 4x smaller, and
            `sample_views` reads it without converting it as a whole). The result is then often a view of
            `image` (a channels-last view of an `(H, W, 3)` array, for instance), so treat it as read-only.
        min_width: decode JPEG files (paths, URLs, bytes) at the smallest of their DCT scales (1/2, 1/4, 1/8) that
            keeps at least this width, which skips most of the decoding of a panorama much larger than the views
            need; other formats, and inputs already decoded, are unaffected.

    Returns:
        `(3, H, W)` float32 tensor (on the input tensor's device, else on the CPU) in the input's value range:
        0..255 for 8-bit and 16-bit images, [0, 1] for floating point arrays and tensors; uint8 for 8-bit images
        with `keep_uint8=True`.

    Conversions (the only ones made):
        * grey (PIL "1"/"L", 2-D arrays, one channel) is replicated to RGB; PIL "1" becomes 0 / 255;
        * palette, CMYK and YCbCr PIL images are converted to RGB; EXIF orientation is applied to images read
          from files, URLs and bytes (and to PIL images that carry it);
        * alpha (RGBA, LA, PA, 2- and 4-channel arrays) is discarded, not composited onto a background;
        * 16-bit integers (PIL "I;16*", uint16 arrays) are divided by 257 onto the 8-bit range, so a
          `rescale_factor` of 1/255 still maps them to [0, 1].

    Floating point input must already be in [0, 1] (the convention of `ToTensor`-style images); it is kept as is,
    so the image processor must not rescale it again (`do_rescale=False`). Float image files (PIL mode "F", e.g.
    HDR TIFFs) are refused: their range has no single meaning.

    Raises:
        PanoramaImageError: missing, unreadable, truncated or corrupt files; URLs that cannot be fetched; images
            over `PIL.Image.MAX_IMAGE_PIXELS` (decompression-bomb protection, checked before decoding); empty,
            1-pixel-high or non-2:1 images; unsupported PIL modes, dtypes or channel counts; NaN/inf or
            out-of-range float values. The message names the source (path, URL or type).
    """
    if isinstance(image, (str, os.PathLike, bytes, bytearray, Mapping)):
        with open_image(image) as (opened, source):
            _check_pixel_limit(opened, source)  # on the stored size, before any decoding
            if min_width is not None:
                _decode_reduced(opened, source, min_width)
            return _pil_to_tensor(opened, source, aspect_ratio_tolerance, keep_uint8)
    source = describe_source(image)
    if isinstance(image, Image.Image):
        return _pil_to_tensor(image, source, aspect_ratio_tolerance, keep_uint8)
    if isinstance(image, np.ndarray):
        if image.dtype.name not in _NUMPY_DTYPES:
            raise PanoramaImageError(
                f"{source}: unsupported dtype; pass uint8 (0..255), uint16 (0..65535) or float in [0, 1]", UNSUPPORTED
            )
        if keep_uint8 and image.dtype == np.uint8 and image.flags.writeable and image.flags.c_contiguous:
            tensor = torch.from_numpy(image)  # no copy: the caller asked for a read-only view
        else:
            # A copy, so the result never aliases the caller's (possibly read-only or big-endian) memory.
            tensor = torch.tensor(image.astype(image.dtype.newbyteorder("="), copy=False))
        return _tensor_to_panorama(tensor, source, aspect_ratio_tolerance, channels_first=False, keep_uint8=keep_uint8)
    if isinstance(image, torch.Tensor):
        tensor = image.detach()
        return _tensor_to_panorama(tensor, source, aspect_ratio_tolerance, channels_first=True, keep_uint8=keep_uint8)
    raise PanoramaImageError(
        f"unsupported panorama type {type(image).__name__}: pass a PIL image, numpy array, torch tensor, file path, "
        "URL, image bytes or a datasets.Image value",
        UNSUPPORTED,
    )


def probe_panorama(image: PanoramaInput, aspect_ratio_tolerance: float = 0.01) -> tuple[int, int]:
    """Check, without a full decode, that `image` would load: returns its `(width, height)` after EXIF orientation.

    What `load_panorama` would refuse for the file itself is refused here too, with the same `PanoramaImageError`
    (missing or unreadable file or URL, decompression bomb, not 2:1 once oriented, unsupported mode); truncated or
    corrupt data is detected by decoding at reduced scale where the format allows it (JPEG DCT scaling), which
    still reads the whole stream at a fraction of the cost. Used by the data scan, so rows are dropped for exactly
    the reasons training and evaluation would fail on them.
    """
    if not isinstance(image, (str, os.PathLike, bytes, bytearray, Mapping, Image.Image)):
        return tuple(load_panorama(image, aspect_ratio_tolerance, keep_uint8=True).shape[:0:-1])
    with open_image(image) as (opened, source):
        _check_pixel_limit(opened, source)
        # Reading a PNG's orientation can decode it (its EXIF chunk may follow the pixels).
        width, height = _decode(opened, source, _oriented_size)
        check_panorama_size(height, width, source, aspect_ratio_tolerance)
        _check_mode(opened, source)
        opened.draft(opened.mode, (max(1, opened.width // 8), max(1, opened.height // 8)))
        _decode(opened, source)
    return width, height


@contextmanager
def open_image(image: PanoramaInput, timeout: float = URL_TIMEOUT_SECONDS) -> Iterator[tuple[Image.Image, str]]:
    """Open (not decode) an image given as a path, URL, data URI, bytes, `datasets.Image` value or PIL image.

    Yields `(image, source)`, `source` naming it for messages. Files and buffers are closed on exit.
    """
    if isinstance(image, Image.Image):
        yield image, describe_source(image)
        return
    source = describe_source(image)
    if isinstance(image, Mapping):
        if image.get("bytes") is not None:
            data = image["bytes"]
        elif image.get("path"):
            with open_image(image["path"], timeout) as opened:
                yield opened
            return
        else:
            raise PanoramaImageError(f"{source}: a datasets.Image value needs 'bytes' or 'path'", NOT_AN_IMAGE)
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        location = os.fspath(image)
        if is_remote(location):
            data = _fetch(location, timeout)
        elif location.startswith(DATA_URI_PREFIX):
            try:
                data = base64.b64decode(location.partition(",")[2], validate=True)
            except binascii.Error as error:
                raise PanoramaImageError(f"{source}: the data URI is not valid base64 ({error})", NOT_AN_IMAGE) from error
        else:
            if not os.path.exists(location):
                raise PanoramaImageError(f"panorama file not found: {source}", NOT_FOUND)
            if os.path.isdir(location):
                raise PanoramaImageError(f"{source} is a directory, not an image file", NOT_AN_IMAGE)
            with _open_pil(location, source) as opened:
                yield opened, source
            return
    with _open_pil(io.BytesIO(data), source) as opened:
        yield opened, source


def _fetch(url: str, timeout: float) -> bytes:
    # huggingface_hub's shared HTTP session: the client transformers itself uses for downloads.
    from huggingface_hub import get_session

    try:
        response = get_session().get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except Exception as error:  # httpx raises several unrelated types; each becomes the same named error
        raise PanoramaImageError(f"cannot read panorama URL {url!r}: {error}", UNREACHABLE) from error
    return response.content


def _open_pil(file, source: str) -> Image.Image:
    try:
        # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS; an image that large is refused all the same.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PanoramaImageError(
            f"{source}: {err} If you trust this file, raise the limit, e.g. `PIL.Image.MAX_IMAGE_PIXELS = "
            "200_000_000`, or set it to None to disable the check.",
            BOMB,
        ) from err
    except UnidentifiedImageError as err:
        raise PanoramaImageError(f"{source} is not an image file PIL can read ({err})", NOT_AN_IMAGE) from err
    except OSError as err:
        raise PanoramaImageError(f"cannot open panorama file {source}: {err}", CORRUPT) from err


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied, read from the header only."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (image.height, image.width) if orientation in _TRANSPOSING_ORIENTATIONS else (image.width, image.height)


def _decode_reduced(image: Image.Image, source: str, min_width: int) -> None:
    """Ask a JPEG decoder for its smallest DCT scale whose output is at least `min_width` wide once oriented."""
    if image.format != "JPEG":
        return
    transposed = _decode(image, source, _oriented_size) != (image.width, image.height)
    size = (max(1, min_width // 2), max(1, min_width)) if transposed else (max(1, min_width), max(1, min_width // 2))
    if size[0] < image.width:
        image.draft(image.mode, size)


def _check_pixel_limit(image: Image.Image, source: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    num_pixels = image.width * image.height
    if limit is not None and num_pixels > limit:
        raise PanoramaImageError(
            f"{source}: {num_pixels} pixels ({image.width}x{image.height}) exceeds PIL.Image.MAX_IMAGE_PIXELS = "
            f"{limit} (decompression-bomb protection). If you trust this image, raise the limit, e.g. "
            f"`PIL.Image.MAX_IMAGE_PIXELS = {num_pixels}`, or set it to None to disable the check.",
            BOMB,
        )


def _check_mode(image: Image.Image, source: str) -> None:
    if image.mode not in ("RGB", *_PIL_MODES_TO_RGB, *_PIL_16_BIT_MODES):
        hint = " (float image files, e.g. HDR TIFFs, have no single range: tone-map them to 8 or 16 bits)" if (
            image.mode == "F"
        ) else ""
        raise PanoramaImageError(
            f"{source}: unsupported PIL mode {image.mode!r}{hint}; panoramas are 8- or 16-bit RGB or grey images "
            "(or pass a uint16 / float array)",
            UNSUPPORTED,
        )


def _decode(image: Image.Image, source: str, read=None):
    """`read(image)` (by default: decode it), with truncated or corrupt data named as such."""
    try:
        return image.load() if read is None else read(image)
    except (OSError, SyntaxError, struct.error) as err:
        # PIL reports truncated data as OSError ("image file is truncated") and bad chunks (e.g. PNG CRC) as
        # SyntaxError; neither is recoverable without guessing the missing pixels.
        raise PanoramaImageError(f"{source}: the image file is truncated or corrupt ({err})", CORRUPT) from err


def is_unit_range_image(image: PanoramaInput) -> bool:
    """Whether `load_panorama(image)` returns values in [0, 1] (float arrays / tensors) rather than 0..255."""
    if isinstance(image, np.ndarray):
        return image.dtype.kind == "f"
    return isinstance(image, torch.Tensor) and image.is_floating_point()


def check_panorama_size(height: int, width: int, source: str, aspect_ratio_tolerance: float = 0.01) -> None:
    """Raise `PanoramaImageError` unless an `height` x `width` image can be an equirectangular panorama (2:1)."""
    if height == 0 or width == 0:
        raise PanoramaImageError(f"{source}: the image is empty ({width}x{height} pixels)", NOT_PANORAMA)
    if height < MIN_HEIGHT:
        raise PanoramaImageError(
            f"{source}: {width}x{height} pixels is too small; a panorama needs >= 2 rows", NOT_PANORAMA
        )
    ratio = width / height
    if abs(ratio - 2.0) > 2.0 * aspect_ratio_tolerance:
        raise PanoramaImageError(
            f"{source}: size {width}x{height} (width:height = {ratio:.4g}:1) is not an equirectangular panorama; "
            f"expected a 2:1 width:height ratio within a relative tolerance of {aspect_ratio_tolerance:g} "
            f"(e.g. {2 * height}x{height})",
            NOT_PANORAMA,
        )


def _pil_to_tensor(image: Image.Image, source: str, aspect_ratio_tolerance: float, keep_uint8: bool) -> torch.Tensor:
    _check_pixel_limit(image, source)  # before decoding, so an oversized file is never decompressed
    _check_mode(image, source)
    _decode(image, source)
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in _PIL_16_BIT_MODES:
        array = np.asarray(image)
        array = array.astype(array.dtype.newbyteorder("="), copy=False)
    elif image.mode == "RGB":
        array = np.asarray(image)
    else:
        array = np.asarray(image.convert("RGB"))
    tensor = torch.tensor(array)
    return _tensor_to_panorama(tensor, source, aspect_ratio_tolerance, channels_first=False, keep_uint8=keep_uint8)


def _to_channels_first(tensor: torch.Tensor, source: str, channels_first: bool) -> torch.Tensor:
    if tensor.dim() == 2:
        return tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise PanoramaImageError(f"{source}: expected 2 or 3 dimensions, (H, W), (H, W, C) or (C, H, W)", UNSUPPORTED)
    first_is_channels = tensor.shape[0] in CHANNEL_COUNTS
    last_is_channels = tensor.shape[-1] in CHANNEL_COUNTS
    if first_is_channels and (channels_first or not last_is_channels):
        return tensor
    if last_is_channels:
        return tensor.permute(2, 0, 1)
    raise PanoramaImageError(
        f"{source}: unsupported channel count; expected 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels "
        "first or last",
        UNSUPPORTED,
    )


def _tensor_to_panorama(
    tensor: torch.Tensor, source: str, aspect_ratio_tolerance: float, channels_first: bool, keep_uint8: bool
) -> torch.Tensor:
    if tensor.dtype not in _INTEGER_DTYPES + _FLOAT_DTYPES:
        raise PanoramaImageError(
            f"{source}: unsupported dtype {tensor.dtype}; pass uint8 (0..255), uint16 (0..65535) or float in [0, 1]",
            UNSUPPORTED,
        )
    if tensor.numel() == 0:
        raise PanoramaImageError(f"{source}: the image is empty", NOT_PANORAMA)
    tensor = _to_channels_first(tensor, source, channels_first)
    check_panorama_size(tensor.shape[1], tensor.shape[2], source, aspect_ratio_tolerance)

    num_channels = tensor.shape[0]
    if num_channels in (1, 2):
        tensor = tensor[:1].expand(3, -1, -1)
    elif num_channels == 4:
        tensor = tensor[:3]

    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all():
            raise PanoramaImageError(f"{source}: the image contains NaN or infinite values", UNSUPPORTED)
        low, high = tensor.min().item(), tensor.max().item()
        if low < 0.0 or high > 1.0:
            raise PanoramaImageError(
                f"{source}: float values span [{low:.4g}, {high:.4g}] but float panoramas must lie in [0, 1]; "
                "pass uint8 for 0..255 data, or divide by 255 first",
                UNSUPPORTED,
            )
    if keep_uint8 and tensor.dtype == torch.uint8:
        return tensor
    result = tensor.to(torch.float32, copy=True).contiguous()
    if tensor.dtype == torch.uint16:
        result /= _UINT16_TO_UINT8
    return result


__all__ = [
    "PanoramaImageError",
    "PanoramaInput",
    "REASONS",
    "check_panorama_size",
    "describe_source",
    "is_remote",
    "is_unit_range_image",
    "load_panorama",
    "open_image",
    "probe_panorama",
]
