"""PanoVLM processing: panorama loading, equirectangular -> views, the image processor and the processor.

Importing this package registers the PanoVLM config, image processor and processor Auto classes (the models are
registered by `import modeling_panovlm`). Sub-packages: `data` (caption tables, collator, augmentation) and
`visualization` (view footprints)."""

from transformers import AutoImageProcessor, AutoProcessor

from configuration_panovlm.configuration_panovlm import PanoVLMConfig

from .image_loading import PanoramaImageError, load_panorama
from .image_processing_panovlm import PanoVLMImageProcessor
from .processing_panovlm import (
    DEFAULT_IMAGE_TOKEN,
    PanoVLMProcessor,
    build_chat_template,
)


# Our image processor samples views with its own torch code and needs neither backend, so it answers for both
# names (transformers would otherwise warn about falling back from "torchvision" when torchvision is installed).
AutoImageProcessor.register(
    PanoVLMConfig,
    image_processor_classes={"pil": PanoVLMImageProcessor, "torchvision": PanoVLMImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(PanoVLMConfig, PanoVLMProcessor, exist_ok=True)

__all__ = [
    "DEFAULT_IMAGE_TOKEN",
    "PanoVLMImageProcessor",
    "PanoVLMProcessor",
    "PanoramaImageError",
    "build_chat_template",
    "load_panorama",
]
