"""Writing and reading the small H.264 test videos of the anonymize tests (PyAV)."""

import av
import numpy as np


def write_mp4(path, frames, fps, crf=None):
    """uint8 RGB frames (N, H, W, 3) as a 4:2:0 H.264 mp4; ``crf``: x264's quality (None: its default)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = np.asarray(frames[0]).shape[:2]
        stream.pix_fmt = "yuv420p"
        if crf is not None:
            stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def read_mp4(path):
    """The decoded frames (N, H, W, 3) and the stream's average frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)]), stream.average_rate
