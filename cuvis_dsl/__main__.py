"""``python -m cuvis_dsl``: the ``cuvis-dsl`` command line."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
