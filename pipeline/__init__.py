"""Data logic in sub-packages: io <- dataset <- ingest <- preprocess; dataset <- stream; dataset <- stats.

(``a <- b``: b may import a.) blt_model never imports pipeline; tests/test_import_rules.py enforces all of it.
"""
