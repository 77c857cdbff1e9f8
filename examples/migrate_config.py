"""Translate a PanoLLaVA experiment config into a PanoVLM run file and the model it starts from: `panovlm
migrate-config`, same flags (`--help` lists them, with examples).

    python examples/migrate_config.py configs/anyres_e2p.yaml --output run.yaml [--build]
"""

import sys

from modeling_panovlm.cli.migrate_config import main


if __name__ == "__main__":
    if status := main():
        sys.exit(status)
