"""`python -m fcos_lib train|evaluate|detect`: see fcos_lib/cli.py."""
import sys

from fcos_lib.cli import main

sys.exit(main())
