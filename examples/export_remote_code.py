"""Make a saved PanoVLM directory loadable without the library, through transformers' remote code:
`panovlm export`, same arguments (`--help` explains them, with examples).

    python examples/export_remote_code.py DIR
"""

import sys

from modeling_panovlm.cli.export import main


if __name__ == "__main__":
    if status := main():
        sys.exit(status)
