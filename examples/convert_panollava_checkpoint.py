"""Convert a PanoLLaVA training run into a PanoVLM checkpoint (and a PEFT adapter for LoRA runs): `panovlm convert`,
same flags (`--help` lists them, with examples).

    python examples/convert_panollava_checkpoint.py --checkpoint-dir RUN_DIR --output-dir OUT \\
        [--vision-config google/siglip2-so400m-patch16-256] [--text-config Qwen/Qwen3-0.6B]
"""

import sys

from modeling_panovlm.cli.convert import main


if __name__ == "__main__":
    if status := main():
        sys.exit(status)
