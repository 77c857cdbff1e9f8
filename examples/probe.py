"""The panorama reasoning probe: the same as the installed `panovlm probe`.

    python examples/probe.py --config examples/probe.yaml [--output-dir out/probe] [--jobs 2] [--quick]

`python examples/probe.py --help` says what it does (the implementation is `modeling_panovlm.cli.probe`).
"""

import sys

from modeling_panovlm.cli.probe import main


if __name__ == "__main__":
    sys.exit(main())
