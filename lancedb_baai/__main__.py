"""``python -m lancedb_baai``: the ``lancedb-baai`` command line."""

from .cli import main

if __name__ == "__main__":
    main()
