"""Prediction: any video file -> per-frame detections of a restored model -> tubes, JSON record and drawn MP4.

Imports every layer below apps; OpenCV for reading and writing videos.
"""
