"""``python -m puhui``: the ``puhui`` command line, as the console script runs it."""

from puhui.cli import main

if __name__ == "__main__":
    main()
