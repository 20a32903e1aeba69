"""Start deal workflows: `python starter.py --lead '{...}'`, `--file leads.csv`, or `--demo`."""

import sys

from l2c.cli import main

if __name__ == "__main__":
    sys.exit(main(["start", *sys.argv[1:]]))
