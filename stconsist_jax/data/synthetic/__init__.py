"""Synthetic twins of the real layout: drawn videos with exact boxes, UCF-101-layout datasets, cached builds.

Imports core, config and data.ucf101; OpenCV for writing videos.
"""
