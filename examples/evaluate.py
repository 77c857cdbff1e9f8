"""Evaluate a checkpoint (PanoVLM or a general VLM as a baseline) on a QuIC-360-style table, or score an existing
predictions file: `panovlm evaluate`, same flags (`--help` lists them, with examples).

    python examples/evaluate.py --model DIR_OR_HUB_ID [--adapter DIR] --csv test.csv --output-dir eval/
        [--tokenizer java-ptb|python] [...]
    python examples/evaluate.py --predictions eval/predictions.csv --output-dir rescored/ [--tokenizer ...]
"""

import sys

from modeling_panovlm.cli.evaluate import main


if __name__ == "__main__":
    if status := main():
        sys.exit(status)
