"""Measures shared by the tools, the footage pipeline and the benchmarks; this package imports only numpy and cv2
(and torch where a measure needs it), never another room of the repository.

- ``measures.shots``: frame-difference scores, shot boundaries (cuts) and duplicate frames.
- ``measures.motion``: DIS optical-flow motion statistic, motion buckets and the classical DIS interpolation baseline.
"""
