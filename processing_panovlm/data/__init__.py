"""Training and evaluation data: caption tables, the training collator, panorama augmentation."""
