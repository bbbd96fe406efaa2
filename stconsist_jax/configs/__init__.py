"""Configs: experiments as get_config() files, installed with the package; `default.py`
documents every field, the others import it and change a few.

Built from the library (they may import any layer below apps); no library module imports them.
"""
