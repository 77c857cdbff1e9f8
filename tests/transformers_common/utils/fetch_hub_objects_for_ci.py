"""Stand-in for `utils/fetch_hub_objects_for_ci.py` of the transformers repository, which the PyPI sdist does not
ship: `test_processing_common.py` maps its fixture URLs to local copies with `url_to_local_path`.

Offline, image URLs map to a synthetic equirectangular panorama written once per URL (PanoVLM refuses images that are
not 2:1, such as the COCO sample the upstream fixture names); other URLs (video, audio: modalities PanoVLM does not
take) are returned unchanged.
"""

import hashlib
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_DIRECTORY = Path(tempfile.gettempdir()) / "panovlm-processing-fixtures"


def url_to_local_path(url: str) -> str:
    if not url.lower().endswith(_IMAGE_SUFFIXES):
        return url
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    path = _DIRECTORY / f"{digest}.png"
    if not path.is_file():
        _DIRECTORY.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(int(digest, 16) % 2**32).integers(0, 256, size=(64, 128, 3), dtype=np.uint8)
        partial = path.with_suffix(".partial.png")
        Image.fromarray(pixels).save(partial)
        partial.replace(path)
    return str(path)
