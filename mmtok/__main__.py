"""`python -m mmtok` = the `mmtok` command."""

import sys

from mmtok.cli import main

sys.exit(main())
