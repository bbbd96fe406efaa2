"""Any dataset: its description (classes, splits, frame source, videos and tubes) and the
validated readers of ACT ground-truth pickles, CVAT video XML and plain CSV annotations.
"""
