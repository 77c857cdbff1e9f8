"""A small byte-level BPE tokenizer with Qwen's special tokens, built locally in milliseconds.

Tests, the demo and downstream CI use it with tiny random models, since no tokenizer can be downloaded at run
time. Its special tokens carry Qwen2/Qwen3 names (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`,
`<|image_pad|>`, ...), so prompts and chat templates look exactly as they do with the real vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
)

# Words the demo data and prompts use (colours, shapes, directions, the default prompts), plus common English,
# so that typical text merges into whole-word tokens instead of single bytes.
_BASE_CORPUS = """
You are a helpful assistant. Describe the panorama image.
In this panoramic image, please provide a concise but detailed description of "location".
What is in front of the camera? What is behind, on the left, on the right? Which direction is the red object?
The panorama shows a red circle in front, a green square on the right, a blue triangle behind and a yellow star
on the left. There is a white cross straddling the seam, an orange ring and a purple diamond.
colour color shape direction front behind left right above below horizon sky ground floor wall seam north south
east west yaw pitch degrees view views tile global circle square triangle star cross ring diamond stripe
red green blue yellow white black orange purple pink brown gray grey cyan magenta
a an the is are was were be been being has have had do does did of in on at to from by with without for and or
not no yes this that these those there here it its they them their we our you your he she his her one two three
four five six seven eight nine ten many some all any each every more most less large small big little tall short
long wide narrow near far inside outside under over between around through across along building street road
car cars people person tree trees water river lake sea beach mountain hill city town room interior furniture
table chair window door light dark bright cloudy sunny weather day night house church bridge park garden field
landscape architecture objects what they doing standing walking sitting looking scene image picture photo camera
0 1 2 3 4 5 6 7 8 9 10 45 90 135 180 . , ; : ! ? " ' ( ) - /
"""


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (a built-in English/panorama corpus by default) and wrap it.

    Deterministic for a given corpus. `<|im_end|>` is the EOS token, `<|endoftext|>` the pad token and
    `<|image_pad|>` the image token (`tokenizer.image_token`); padding is on the left (batched generation).
    """
    texts = list(corpus) if corpus is not None else [line for line in _BASE_CORPUS.splitlines() if line.strip()]
    if not texts:
        raise ValueError("build_tiny_tokenizer needs a non-empty corpus")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus lets rare words still pass the merge-frequency threshold.
    backend.train_from_iterator(texts * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>"},
        padding_side="left",
    )


__all__ = ["SPECIAL_TOKENS", "build_tiny_tokenizer"]
