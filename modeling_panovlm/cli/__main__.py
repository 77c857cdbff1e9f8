"""`python -m modeling_panovlm.cli COMMAND ...`, the same as the installed `panovlm` command."""

import sys

from modeling_panovlm.cli import main


sys.exit(main())
