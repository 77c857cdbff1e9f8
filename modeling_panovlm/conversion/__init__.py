"""Conversion of PanoLLaVA (the predecessor) checkpoints into PanoVLM checkpoints."""
