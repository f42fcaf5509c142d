"""Shared measures of frames and footage, the lowest floor of the repository (imports only numpy, torch, cv2).

motion: DIS optical-flow motion statistic, motion buckets and the classical DIS interpolation baseline.
"""
