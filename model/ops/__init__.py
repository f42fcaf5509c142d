"""Pure tensor functions with reference twins: SSD scan, interleaved scan order, warping, windows."""

from .scan import interleave_scan, merge_scan
from .ssd import ssd_scan, ssd_scan_reference
from .warp import backward_warp
from .window import (cross_frame_window_partition, cross_frame_window_reverse, window_partition,
                     window_reverse)

__all__ = ["interleave_scan", "merge_scan", "ssd_scan", "ssd_scan_reference", "backward_warp",
           "window_partition", "window_reverse", "cross_frame_window_partition", "cross_frame_window_reverse"]
