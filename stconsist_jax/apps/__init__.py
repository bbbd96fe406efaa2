"""Apps: the command lines (flags, one-line user errors) over the library; launch.py and tools/ call them.

May import every layer; no library module imports apps.
"""
