"""zapbilling's benchmark suite: `python -m bench` (see bench/__main__.py). bench/soak.py is the
separate soak test."""
