"""``python -m clipattr_utils.extract``: the batch CLI (see `clipattr_utils.cli_extract`).

Only a launcher. ``clipattr_utils.extract`` stays the function `features.extract` even once
this module is imported (the package keeps that name; see ``clipattr_utils/__init__.py``), so
import the CLI as ``from clipattr_utils import cli_extract``.
"""

if __name__ == "__main__":
    import sys

    from clipattr_utils.cli_extract import main

    sys.exit(main())
