"""`make bench`: its stages, one module per group, and the one report writer (report.py)."""
