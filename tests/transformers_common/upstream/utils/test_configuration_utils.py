"""Stand-in for transformers' `tests/utils/test_configuration_utils.py`, which the PyPI sdist does not ship.

`ConfigTester.check_config_arguments_init` reads `config_common_kwargs` only for configs without sub-configs; PanoVLM
gives `ConfigTester` its composite `PanoVLMConfig` only, so any use of it is an error rather than a vacuous pass."""

from collections.abc import Mapping


class _NotShipped(Mapping):
    def _refuse(self, *args):
        raise RuntimeError("config_common_kwargs is not in transformers' sdist; run ConfigTester on composite configs only")

    __getitem__ = __iter__ = __len__ = _refuse


config_common_kwargs = _NotShipped()
