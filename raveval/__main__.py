import sys

from raveval.cli import main

sys.exit(main())
