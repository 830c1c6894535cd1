import sys

from trainlab.cli import entry

sys.exit(entry())
