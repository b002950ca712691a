"""The `streamrag` command, on top of everything else (see main.py)."""
