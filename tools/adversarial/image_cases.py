"""Images: 16-bit and odd files, huge images, paths, EXIF rotation, URLs."""

from __future__ import annotations

import time
from pathlib import Path

from case_helpers import Ctx, LocalServer, imp, load_processor, names, pixels, prompt_for, refusal
from case_registry import case


# ---- images --------------------------------------------------------------------------------------------------------


def _png16_rgb(path: Path, array) -> None:
    """A 16-bit RGB PNG (PIL cannot write one)."""
    import struct
    import zlib

    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _huge_png(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row, parts = zlib.compressobj(9), b"\x00" + bytes(width * 3), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _close(actual, expected, tolerance: float = 0.03) -> tuple[bool, float]:
    difference = float((actual.float() - expected.float()).abs().mean())
    return difference <= tolerance, difference


def same_pixels_as_8bit(ctx: Ctx, variant: str, entry: str) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    processor = load_processor(ctx.ws / "a")
    rgb = np.asarray(Image.open(ctx.ws / "pano.png").convert("RGB"))
    gray = np.load(ctx.ws / "gray.npy")
    path = ctx.tmp / {"png16_rgb": "pano16.png", "png16_gray": "gray16.png", "tiff_float": "float.tif"}[variant]
    if variant == "png16_rgb":
        _png16_rgb(path, rgb.astype(np.uint16) * 257)
        reference = rgb
    elif variant == "png16_gray":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
        reference = np.repeat(gray[..., None], 3, axis=2)
    else:
        Image.fromarray(gray.astype(np.float32) / 255.0, mode="F").save(path)
        reference = np.repeat(gray[..., None], 3, axis=2)
    expected = pixels(processor, reference)
    source = {"path": str(path), "pathlib": path, "pil": Image.open(path)}.get(entry)

    def run():
        if entry == "image_processor":
            return processor.image_processor(str(path), return_tensors="pt")["pixel_values"]
        return pixels(processor, source)

    try:
        actual = run()
    except Exception as error:  # noqa: BLE001
        return refusal(error, path.name)
    ok, difference = _close(actual, expected.reshape(actual.shape) if actual.numel() == expected.numel() else expected)
    note = f"mean |difference| to the 8-bit panorama's pixel_values: {difference:.3f}"
    return ("good" if ok else "silent_wrong"), note + ("" if ok else f"; white fraction {float((actual > 0.99).float().mean()):.2f}, black fraction {float((actual < -0.99).float().mean()):.2f}")


for _variant in ("png16_rgb", "png16_gray", "tiff_float"):
    for _entry in ("path", "pil", "image_processor"):
        case("images", f"{_variant}_via_{_entry}", variant=_variant, entry=_entry)(same_pixels_as_8bit)


def bad_file(ctx: Ctx, kind: str, entry: str) -> tuple[str, str]:
    processor = load_processor(ctx.ws / "a")
    good = (ctx.ws / "pano.png").read_bytes()
    path = ctx.tmp / {"missing": "nowhere/pano.png", "truncated_png": "cut.png", "truncated_jpeg": "cut.jpg",
                      "not_image": "notes.png", "empty": "empty.png"}[kind]
    if kind == "truncated_png":
        path.write_bytes(good[: len(good) * 6 // 10])
    elif kind == "truncated_jpeg":
        from PIL import Image

        Image.open(ctx.ws / "pano.png").convert("RGB").save(ctx.tmp / "full.jpg", quality=95)
        data = (ctx.tmp / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "not_image":
        path.write_text("these are notes, not an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    source = {"path": str(path), "pathlib": path, "list": [str(ctx.ws / "pano.png"), str(path)]}[entry]
    try:
        if entry == "list":
            processor(images=source, text=[prompt_for(processor)] * 2, return_tensors="pt", padding=True)
        else:
            pixels(processor, source)
    except Exception as error:  # noqa: BLE001
        # The file, and what is wrong with it (a missing file is not "an incorrect image source").
        problem = {"missing": "not found|does not exist|no such file", "truncated_png": "truncated|corrupt",
                   "truncated_jpeg": "truncated|corrupt", "not_image": "not an image|cannot identify|not a valid image",
                   "empty": "empty|not an image|cannot identify"}[kind]
        return refusal(error, path.name, problem)
    return "silent_wrong", f"{kind} file accepted without error"


for _kind in ("missing", "truncated_png", "truncated_jpeg", "not_image", "empty"):
    for _entry in ("path", "pathlib", "list"):
        if _kind in ("not_image", "empty") and _entry == "pathlib":
            continue
        case("images", f"{_kind}_file_via_{_entry}", kind=_kind, entry=_entry)(bad_file)


@case("images", "huge_98mpx_png_refused_before_decoding", timeout=240)
def huge(ctx: Ctx) -> tuple[str, str]:
    import resource

    path = ctx.tmp / "huge.png"
    _huge_png(path, 14000, 7000)
    processor = load_processor(ctx.ws / "a")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        pixels(processor, str(path))
        outcome = None
    except Exception as error:  # noqa: BLE001
        outcome = error
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    note = f"peak memory grew {grown:.0f} MB in {time.perf_counter() - started:.1f}s"
    if outcome is None:
        return "silent_wrong", f"a 98-Mpx panorama was decoded and processed ({note})"
    verdict, message = refusal(outcome, path.name)
    if verdict == "good" and grown > 150:
        return "unclear_error", f"refused only after decoding it fully ({note}): {message}"
    return verdict, f"{message} ({note})"


def pathlib_ok(ctx: Ctx, entry: str) -> tuple[str, str]:
    processor = load_processor(ctx.ws / "a")
    expected = pixels(processor, str(ctx.ws / "pano.png"))
    try:
        if entry == "image_processor":
            actual = processor.image_processor(ctx.ws / "pano.png", return_tensors="pt")["pixel_values"]
            expected = processor.image_processor(str(ctx.ws / "pano.png"), return_tensors="pt")["pixel_values"]
        elif entry == "list":
            actual = processor(images=[ctx.ws / "pano.png"], text=[prompt_for(processor)], return_tensors="pt")["pixel_values"]
        else:
            actual = pixels(processor, ctx.ws / "pano.png")
    except Exception as error:  # noqa: BLE001
        return "unclear_error", f"a pathlib.Path is refused: {type(error).__name__}: {str(error)[:300]}"
    ok, difference = _close(actual, expected, 0.0)
    return ("good" if ok else "silent_wrong"), f"pathlib.Path vs str: mean |difference| {difference:.4f}"


for _entry in ("processor", "list", "image_processor"):
    case("images", f"pathlib_path_via_{_entry}", entry=_entry)(pathlib_ok)


@case("images", "control_str_path_equals_array")
def control_path(ctx: Ctx) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    processor = load_processor(ctx.ws / "a")
    ok, difference = _close(pixels(processor, str(ctx.ws / "pano.png")),
                            pixels(processor, np.asarray(Image.open(ctx.ws / "pano.png").convert("RGB"))), 0.0)
    return ("good" if ok else "silent_wrong"), f"path vs decoded array: mean |difference| {difference:.4f}"


def _exif_rotated(ctx: Ctx, suffix: str) -> Path:
    from PIL import Image, ImageOps

    upright = Image.open(ctx.ws / "pano.png").convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # portrait on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": exif_transpose gives the upright 2:1 panorama back
    path = ctx.tmp / f"rotated{suffix}"
    stored.save(path, exif=exif, **({"quality": 98} if suffix == ".jpg" else {}))
    assert ImageOps.exif_transpose(Image.open(path)).size == upright.size
    return path


def exif_loader(ctx: Ctx, suffix: str) -> tuple[str, str]:
    import numpy as np
    from PIL import Image, ImageOps

    path = _exif_rotated(ctx, suffix)
    processor = load_processor(ctx.ws / "a")
    expected = pixels(processor, np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))
    try:
        actual = pixels(processor, str(path))
    except Exception as error:  # noqa: BLE001
        return "unclear_error", f"a valid EXIF-rotated 2:1 panorama is refused: {str(error)[:300]}"
    ok, difference = _close(actual, expected, 0.05)
    return ("good" if ok else "silent_wrong"), f"vs the upright panorama: mean |difference| {difference:.3f}"


def _scan(ctx: Ctx, table: Path):
    """(kept row numbers, problems as (row, text)) of the table's image check, in either layout."""
    try:
        prepare = imp("processing_panovlm.data:prepare_caption_table")
        prepared = prepare(str(table), needs_text=False)
        return list(prepared.rows["row"]), [(p.row, f"{p.reason}: {p.detail}") for p in prepared.problems]
    except ImportError:
        load, scan = imp("processing_panovlm.caption_data:load_caption_table"), imp("processing_panovlm.caption_data:scan_images")
        kept, problems = scan(load(table))
        return list(kept["row"]), [(p.row, f"{p.reason}: {getattr(p, 'detail', '')}") for p in problems]


def exif_scan(ctx: Ctx, suffix: str) -> tuple[str, str]:
    path = _exif_rotated(ctx, suffix)
    table = ctx.tmp / "table.csv"
    table.write_text(f"url,query,annotation\n{path},front,a red circle\n{ctx.ws / 'pano.png'},front,a red circle\n")
    try:
        kept, problems = _scan(ctx, table)
    except Exception as error:  # noqa: BLE001
        return "unclear_error", f"scan raised: {type(error).__name__}: {str(error)[:300]}"
    if problems:
        return "unclear_error", f"the scan refuses a valid EXIF-rotated panorama: {problems}"
    return "good", f"kept rows {kept}"


for _suffix in (".jpg", ".png"):
    case("images", f"exif_rotated{_suffix.replace('.', '_')}_via_processor", suffix=_suffix)(exif_loader)
    case("images", f"exif_rotated{_suffix.replace('.', '_')}_via_table_scan", suffix=_suffix)(exif_scan)


def url_case(ctx: Ctx, what: str, entry: str) -> tuple[str, str]:
    import socket

    with LocalServer(ctx) as server:
        if what == "refused":
            with socket.socket() as probe:  # a port nobody listens on
                probe.bind(("127.0.0.1", 0))
                url = f"http://127.0.0.1:{probe.getsockname()[1]}/pano.png"
        else:
            url = server.url + ("/pano.png" if what == "ok" else "/missing/pano.png")
        if entry == "processor":
            processor = load_processor(ctx.ws / "a")
            try:
                actual = pixels(processor, url)
            except Exception as error:  # noqa: BLE001
                if what == "ok":
                    return "unclear_error", f"a served panorama is refused: {str(error)[:300]}"
                return refusal(error, url)
            if what != "ok":
                return "silent_wrong", f"{url} ({what}) gave pixels"
            ok, difference = _close(actual, pixels(processor, str(ctx.ws / "pano.png")), 0.0)
            return ("good" if ok else "silent_wrong"), f"URL vs file: mean |difference| {difference:.4f}"
        table = ctx.tmp / "table.csv"
        table.write_text(f"url,query,annotation\n{ctx.ws / 'pano.png'},front,a red circle\n{url},front,a red circle\n")
        try:
            kept, problems = _scan(ctx, table)
        except Exception as error:  # noqa: BLE001
            return refusal(error, url, "row 2|line 3")
        if what == "ok":
            return ("good", f"kept {kept}") if not problems else ("unclear_error", f"refused a served URL: {problems}")
        text = " ".join(str(p) for p in problems)
        if any(row == 2 for row, _ in problems) and names(text, url):
            return "good", f"reported: {problems}"
        if problems:
            return "unclear_error", f"reported without naming the URL and row: {problems}"
        return "silent_wrong", f"the scan kept the row of the failing URL ({what}): kept rows {kept}"


for _what in ("404", "refused", "ok"):
    for _entry in ("processor", "table_scan"):
        case("images", f"url_{_what}_via_{_entry}", what=_what, entry=_entry)(url_case)


