"""Sharing PanoVLM on the Hub: model cards, pushes of models / processors / adapters, and the flat remote-code
export."""

from .card_metrics import read_metrics
from .cards import (
    INSTALL_COMMAND,
    PANOVLM_TAGS,
    build_adapter_card,
    build_model_card,
    write_adapter_card,
)
from .push import push_adapter_to_hub, push_to_hub
from .remote_code import export_remote_code, render_remote_code
from .repo_ids import hub_repo_id


__all__ = [
    "INSTALL_COMMAND",
    "PANOVLM_TAGS",
    "build_adapter_card",
    "build_model_card",
    "export_remote_code",
    "hub_repo_id",
    "push_adapter_to_hub",
    "push_to_hub",
    "read_metrics",
    "render_remote_code",
    "write_adapter_card",
]
