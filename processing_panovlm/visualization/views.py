"""Pictures of what the model sees: each view's footprint drawn on the panorama, plus the view tiles.

A footprint is the border of a view's pixel grid projected into the equirectangular image with the sampler's own
geometry (`equirect.view_lonlat` and the same pixel-centre convention), so it shows exactly which part of the
panorama a view samples. Outlines that cross the +/-180 degree seam are cut there and continue from the other
edge; a view over a pole gets an outline that runs once around the image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from configuration_panovlm.view_layout import ViewSpec
from processing_panovlm.equirect import view_lonlat
from processing_panovlm.image_loading import PanoramaInput, load_panorama
from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor


# Colour-blind-safe palette (Okabe-Ito), cycled over views.
VIEW_COLOURS = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
)


def is_point_sampled(view: ViewSpec) -> bool:
    """Whether a view covers part of the panorama (and so has a footprint) rather than all of it."""
    return view.kind in ("perspective", "equirect") and not (view.hfov_deg >= 360.0 and view.vfov_deg >= 180.0)


def view_footprint(view: ViewSpec, size: int, width: int, height: int) -> list[np.ndarray]:
    """Outline of a view in ERP pixel coordinates.

    Args:
        view: a perspective or equirect-crop view (`is_point_sampled(view)`).
        size: side of the view in pixels (the border is traced through its border pixels).
        width, height: size of the ERP image it is drawn on.

    Returns:
        Polylines, each `(N, 2)` float `(x, y)` in pixels, cut at the seam (x in [-0.5, width - 0.5], the
        sampler's pixel-centre coordinates).
    """
    lon, lat = view_lonlat(view, size)
    # The border, clockwise: top row, right column, bottom row backwards, left column upwards (closed).
    ring = [
        (lon[0, :], lat[0, :]),
        (lon[1:, -1], lat[1:, -1]),
        (lon[-1, -2::-1], lat[-1, -2::-1]),
        (lon[-2::-1, 0], lat[-2::-1, 0]),
    ]
    lon_ring = np.concatenate([part[0] for part in ring])
    lat_ring = np.concatenate([part[1] for part in ring])
    lines, current = [], [(lon_ring[0], lat_ring[0])]
    for lon1, lat1 in zip(lon_ring[1:], lat_ring[1:]):
        lon0, lat0 = current[-1]
        step = lon1 - lon0
        if abs(step) > math.pi:  # crossed the seam: end at this edge, restart at the other one
            edge = math.copysign(math.pi, lon0)
            unwrapped = lon1 + math.copysign(2 * math.pi, lon0)
            crossing = lat0 + (lat1 - lat0) * (edge - lon0) / (unwrapped - lon0)
            current.append((edge, crossing))
            lines.append(np.array(current))
            current = [(-edge, crossing)]
        current.append((lon1, lat1))
    lines.append(np.array(current))
    # Pixel-centre convention of the sampler (equirect.py): lon -pi..pi spans columns -0.5..W-0.5.
    return [
        np.stack(
            [
                ((line[:, 0] / (2 * math.pi) + 0.5) * width - 0.5).clip(-0.5, width - 0.5),
                ((0.5 - line[:, 1] / math.pi) * height - 0.5).clip(-0.5, height - 0.5),
            ],
            axis=1,
        )
        for line in lines
    ]


def draw_view_footprints(
    panorama: Image.Image, views: tuple[ViewSpec, ...], size: int, line_width: int = 2
) -> Image.Image:
    """A copy of `panorama` (RGB) with the footprint of every point-sampled view in `views` drawn in its colour
    (`VIEW_COLOURS[index % len]`) and labelled with its index."""
    canvas = panorama.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for index, view in enumerate(views):
        if not is_point_sampled(view):
            continue
        colour = VIEW_COLOURS[index % len(VIEW_COLOURS)]
        lines = view_footprint(view, size, canvas.width, canvas.height)
        for line in lines:
            # PIL truncates float coordinates; round half up so a pixel centre at i - 0.5 lands on pixel i.
            pixels = np.floor(line + 0.5).astype(int)
            draw.line([tuple(point) for point in pixels.tolist()], fill=colour, width=line_width)
        x, y = lines[0][0]
        draw.text((min(x + 3, canvas.width - 12), min(y + 3, canvas.height - 12)), str(index), fill=colour)
    return canvas


def render_view_overview(
    panorama: PanoramaInput,
    image_processor: PanoVLMImageProcessor,
    display_width: int = 1024,
    columns: int | None = None,
) -> Image.Image:
    """The panorama (scaled to `display_width`) with every view's footprint, above a grid of the view tiles
    exactly as the image processor samples them (before normalisation), each framed in its view's colour and
    labelled with its index, yaw and pitch.

    Args:
        panorama: anything `load_panorama` accepts.
        image_processor: decides the views (its crop strategy, fov, overlap, pitch levels, view size).
        display_width: width of the output picture in pixels.
        columns: tiles per row. By default a layout with several pitch rows shows the global view (if any) on a
            row of its own, then one row of tiles per pitch row, as the views are arranged around the sphere;
            otherwise all views run in rows of up to 5.

    Returns:
        An RGB `PIL.Image`.
    """
    erp = load_panorama(panorama, image_processor.aspect_ratio_tolerance)  # (3, H, W), 0..255
    views = image_processor(erp.numpy().transpose(1, 2, 0).astype(np.uint8), do_normalize=False, return_tensors="pt")
    tiles = (views["pixel_values"][0].clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (V, S, S, 3)
    layout = image_processor.view_layout
    erp_image = Image.fromarray(erp.permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    erp_image = erp_image.resize((display_width, display_width // 2), Image.Resampling.BILINEAR)
    top = draw_view_footprints(erp_image, layout.views, image_processor.image_size)

    if columns is None and layout.num_rows > 1:
        columns, first = layout.views_per_row, int(layout.has_global_view)
        places = [(0, 0)] * first + [(first + index // columns, index % columns) for index in range(len(tiles) - first)]
    else:
        columns = columns or min(len(tiles), 5)
        places = [(index // columns, index % columns) for index in range(len(tiles))]
    rows = places[-1][0] + 1
    margin, label = 6, 14
    tile = (display_width - margin * (columns + 1)) // columns
    canvas = Image.new("RGB", (display_width, top.height + rows * (tile + label + margin) + margin), (24, 24, 24))
    canvas.paste(top, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, (pixels, view, (row, column)) in enumerate(zip(tiles, layout.views, places)):
        x = margin + column * (tile + margin)
        y = top.height + margin + row * (tile + label + margin)
        colour = VIEW_COLOURS[index % len(VIEW_COLOURS)] if is_point_sampled(view) else (160, 160, 160)
        canvas.paste(Image.fromarray(pixels).resize((tile, tile), Image.Resampling.BILINEAR), (x, y + label))
        draw.rectangle((x - 2, y + label - 2, x + tile + 1, y + label + tile + 1), outline=colour, width=2)
        text = f"{index}: yaw {view.yaw_deg:g}, pitch {view.pitch_deg:g} ({view.kind})"
        if draw.textlength(text) > tile:  # narrow tiles (many views a row): the short form
            text = f"{index}: y {view.yaw_deg:g} p {view.pitch_deg:g}"
        draw.text((x, y), text, fill=colour)
    return canvas


__all__ = ["VIEW_COLOURS", "draw_view_footprints", "is_point_sampled", "render_view_overview", "view_footprint"]
