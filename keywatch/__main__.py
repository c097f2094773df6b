import sys

from keywatch.cli import main

sys.exit(main())
