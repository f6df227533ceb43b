import sys

from airouter.cli import main

sys.exit(main())
