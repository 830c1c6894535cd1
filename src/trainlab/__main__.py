import sys

from trainlab.cli import main

sys.exit(main())
