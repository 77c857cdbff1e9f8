"""PanoVLM end to end on CPU, offline: the same as the installed `panovlm demo`.

    python examples/demo.py [--output-dir out/demo] [--resampler mlp] [--quick]
                            [--task ceiling_floor] [--pitch-levels-deg 30 0 -30]

`python examples/demo.py --help` says what it does (the implementation is `modeling_panovlm.cli.demo`).
"""

import sys

from modeling_panovlm.cli.demo import main


if __name__ == "__main__":
    sys.exit(main())
