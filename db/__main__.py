"""`python -m db COMMAND`: list, show, query (read-only) and export the results database."""

import sys

from db.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m db export metrics | head`
        sys.stdout = None
        sys.exit(0)
