"""Footage in and out: what ``interpolate.py`` (the command line) runs, split by concern.

- ``footage.video_io``: frame sources and sinks (videos through PyAV, frame folders), probing, atomic outputs.
- ``footage.colour``: colour tags and the YUV <-> RGB matrix; ``footage.audio``: the source's audio, in sync.
- ``footage.timeplan``: where output frames fall between input frames, and the halving plan for t = 0.5 models.
- ``footage.interpolator``: :class:`FrameInterpolator`, batched model calls for many frame pairs.
- ``footage.pipeline``: the threaded stream (reader, model, writer) that ties them together.

This package may import ``measures``, ``model``, ``checkpoint`` and ``config``; never ``benchmark`` or training code.
"""
