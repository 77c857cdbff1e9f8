"""transformers' common test files land here (see `tests/transformers_common`), next to the stand-ins for the modules
the sdist does not ship."""
