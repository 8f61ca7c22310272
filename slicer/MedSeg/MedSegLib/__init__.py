"""Qt-free logic of the MedSeg Slicer module (tested with pytest against real medseg runs)."""

from MedSegLib.client import Cancelled, LocalMedSeg, MedSegError, MedSegServer, Result, segment_specs

__all__ = ["Cancelled", "LocalMedSeg", "MedSegError", "MedSegServer", "Result", "segment_specs"]
