"""The vision towers PanoVLM supports: how many non-patch tokens each puts before its patch tokens, and the pixel
normalisation each family published."""

# Vision towers we support, with the number of non-patch tokens at the start of `last_hidden_state`
# (CLS, registers) that are dropped so that each view's tokens form a (rows, columns) grid.
_VISION_PREFIX_TOKENS = {
    "siglip_vision_model": lambda c: 0,
    "siglip2_vision_model": lambda c: 0,
    "clip_vision_model": lambda c: 1,
    "dinov2": lambda c: 1,
    "dinov2_with_registers": lambda c: 1 + c.num_register_tokens,
}
SUPPORTED_VISION_MODEL_TYPES = tuple(_VISION_PREFIX_TOKENS)

# Each tower family's published pixel normalisation: the stated default for a tower whose checkpoint ships no image
# processor config (from_vision_text_pretrained warns when it falls back to it). (mean, std) per RGB channel.
SIGLIP_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP_NORMALISATION = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
IMAGENET_NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TOWER_NORMALISATION = {
    "siglip_vision_model": SIGLIP_NORMALISATION,
    "siglip2_vision_model": SIGLIP_NORMALISATION,
    "clip_vision_model": CLIP_NORMALISATION,
    "dinov2": IMAGENET_NORMALISATION,
    "dinov2_with_registers": IMAGENET_NORMALISATION,
}


__all__ = [
    "CLIP_NORMALISATION",
    "IMAGENET_NORMALISATION",
    "SIGLIP_NORMALISATION",
    "SUPPORTED_VISION_MODEL_TYPES",
    "TOWER_NORMALISATION",
]
