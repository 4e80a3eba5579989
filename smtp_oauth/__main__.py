"""``python -m smtp_oauth`` is the ``smtp-oauth`` command."""

import sys

from smtp_oauth.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
