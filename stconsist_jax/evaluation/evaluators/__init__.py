"""The evaluators, one module per output type: `clips` (classification and the clip box),
`frames` (frame-AP), `tubes` (linked tubes, video-AP); each module's class is `Evaluator`.
"""
