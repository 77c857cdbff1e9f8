"""Batches for training: caption-table rows -> `pixel_values`, chat-formatted `input_ids`, `labels`.

Each row (`image`, `query`, `annotation`, `prompt_style`, `row`, as `processing_panovlm.data.load_caption_table`
gives; `image` a path, URL or embedded `datasets.Image` value, read by `load_panorama`) becomes the chat
`[user(image + text), assistant(annotation)]` of `PanoVLMProcessor.build_messages`, rendered by the
processor's chat template (which adds the saved system prompt and user template). The prompt part (everything up to and including
the generation prompt, with the image placeholder expanded) is tokenised exactly as at generation time and masked
out of the labels; the answer part (annotation + end of turn) is the target. Batches are padded on the right;
padding and image tokens are never targets.
"""

from __future__ import annotations

import torch

from processing_panovlm.processing_panovlm import PanoVLMProcessor

from .augmentation import PanoramaAugmentation


IGNORE_INDEX = -100


class PanoVLMDataCollator:
    """Collate caption rows into model inputs.

    Args:
        processor: the model's `PanoVLMProcessor`.
        views_only: return only `pixel_values` and the view metadata (the vision stage needs no text).
        augmentation: applied to the panoramas of rows whose `augment` column is true (or absent); tables of
            evaluation data carry `augment=False`, so they are never augmented.
        max_length: longest sequence; a longer answer is cut, keeping its end-of-turn tokens. The prompt and its
            image tokens are never truncated: a prompt longer than `max_length` raises.

    `epoch` is set by the training callback so that augmentation differs between epochs yet is reproducible.
    """

    def __init__(
        self,
        processor: PanoVLMProcessor,
        views_only: bool = False,
        augmentation: PanoramaAugmentation | None = None,
        max_length: int | None = None,
    ):
        self.processor = processor
        self.views_only = views_only
        self.augmentation = augmentation
        self.max_length = max_length
        self.epoch = 0

    def load(self, row: dict) -> torch.Tensor:
        """The row's panorama as `(3, H, W)` float in [0, 1], augmented when an augmentation is set."""
        panorama = self.processor.image_processor.load(row["image"]) / 255.0
        if self.augmentation is not None and row.get("augment", True):
            panorama = self.augmentation(panorama, row=row["row"], epoch=self.epoch)
        return panorama

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        panoramas = [self.load(row) for row in rows]
        if self.views_only:
            return dict(self.processor.image_processor(panoramas, do_rescale=False, return_tensors="pt"))

        prompts, answers = [], []
        for row in rows:
            verbatim = row["prompt_style"] == "instruction"
            prompt = self.processor.apply_chat_template(
                self.processor.build_messages(row["query"], verbatim=verbatim), add_generation_prompt=True
            )
            full = self.processor.apply_chat_template(
                self.processor.build_messages(row["query"], row["annotation"], verbatim=verbatim)
            )
            if not full.startswith(prompt):
                raise ValueError("the chat template renders the prompt differently with and without the answer")
            answers.append((row, full[len(prompt) :]))
            prompts.append(prompt)

        encoded = self.processor(images=panoramas, text=prompts, do_rescale=False)
        sequences, targets = [], []
        for prompt_ids, (row, answer) in zip(encoded["input_ids"], answers):
            answer_ids = self._answer_ids(row, answer, len(prompt_ids))
            sequences.append(list(prompt_ids) + answer_ids)
            targets.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)

        length = max(map(len, sequences))
        pad_id = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, (sequence, target) in enumerate(zip(sequences, targets)):
            input_ids[index, : len(sequence)] = torch.tensor(sequence)
            labels[index, : len(target)] = torch.tensor(target)
            attention_mask[index, : len(sequence)] = 1
        batch = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
        return {**batch, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _answer_ids(self, row: dict, answer: str, prompt_length: int) -> list[int]:
        """Token ids of the answer part, cut to fit `max_length` while keeping the end-of-turn tokens."""
        tokenizer = self.processor.tokenizer
        annotation = row["annotation"]
        if not answer.startswith(annotation):
            raise ValueError("the chat template does not render the assistant answer verbatim")
        body = tokenizer(annotation, add_special_tokens=False)["input_ids"]
        tail = tokenizer(answer[len(annotation) :], add_special_tokens=False)["input_ids"]
        if self.max_length is None or prompt_length + len(body) + len(tail) <= self.max_length:
            return body + tail
        room = self.max_length - prompt_length - len(tail)
        if room < 1:
            raise ValueError(
                f"row {row['row']}: the prompt is {prompt_length} tokens ({self.processor.num_image_tokens} of them "
                f"image tokens), which leaves no room for an answer within max_length={self.max_length}; image "
                "tokens are never truncated, so raise max_length"
            )
        return body[:room] + tail


__all__ = ["IGNORE_INDEX", "PanoVLMDataCollator"]
