#!/usr/bin/env python
"""recbole-ext command line: `python run.py --model=BPR --dataset=ml-100k` (see `python run.py --help`)."""
import sys

from recbole_ext.cli import main

if __name__ == "__main__":
    sys.exit(main())
