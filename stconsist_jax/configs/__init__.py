"""Training configurations: ml_collections get_config() files.

`default.py` documents every field; the others import it and change a few.
"""
