import sys

from guard.adapters.cli import main

sys.exit(main())
