"""Train a PanoVLM stage, or the stages of a run file in order: the same as the installed `panovlm train`.

    python examples/train.py --model DIR_OR_HUB_ID --stage {vision,resampler,finetune} --train-csv CSV \
        --output-dir OUT [--max-steps N] [...]
    python examples/train.py --config examples/stages.yaml [--stage finetune] [--any-flag value ...]

`python examples/train.py --help` lists every flag (the implementation is `modeling_panovlm.cli.train`).
"""

import sys

from modeling_panovlm.cli.train import main


if __name__ == "__main__":
    sys.exit(main())
