"""Offline fixtures for tests, the demo and users' own CI: tiny random checkpoints, a tiny tokenizer and synthetic
panoramas with known objects at known directions."""
