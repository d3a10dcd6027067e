import sys

from core.cli import main

if __name__ == "__main__":  # spawned worker children import this module as __mp_main__
    sys.exit(main())
