import sys

from crisp.cli import main

sys.exit(main())
