"""Run the lead-to-cash worker: all workflows and activities on task queue "lead-to-cash"."""

import sys

from l2c.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker"]))
