"""Stand-in for transformers' `tests/exporters/test_export.py`, which the PyPI sdist does not ship: no export tests
(torch.export / ONNX) are run."""


class ExportTesterMixin:
    """Empty: `ModelTesterMixin` derives from it."""
