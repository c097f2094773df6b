import sys

from keywatch.cli import main

if __name__ == "__main__":  # probe worker processes (spawn) import this module too
    sys.exit(main())
