"""Models: building from recipes (build.py), loading checkpoint families (load.py),
parameter groups for the Fisher analysis (groups.py)."""
