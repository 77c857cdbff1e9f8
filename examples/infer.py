"""Ask a checkpoint one or several questions about one panorama: `panovlm infer`, same flags (`--help` lists them,
with examples).

    python examples/infer.py --model DIR_OR_HUB_ID --image pano.jpg --prompt "What is behind the camera?" \\
        [--prompt ...] [--prompts-file FILE] [--verbatim] [--stream] [--show-views views.png] [--adapter DIR]
"""

import sys

from modeling_panovlm.cli.infer import main


if __name__ == "__main__":
    if status := main():
        sys.exit(status)
