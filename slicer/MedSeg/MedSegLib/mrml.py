"""A medseg label image into an MRML segmentation node, segment names and colours from the model.

Only MRML and VTK classes are used, reached through the ``slicer`` module given (Slicer's own, or
the PyPI ``slicer-core`` package in the tests), so the same code runs in both."""

from __future__ import annotations

from pathlib import Path

from MedSegLib.client import MedSegError, segment_specs


def import_label_image(slicer, scene, label_path: Path, model: dict, name: str, reference_volume=None):
    """Read ``label_path`` (NIfTI) and return a new vtkMRMLSegmentationNode in ``scene`` with one
    segment per foreground label of ``model`` (labels absent from the prediction as empty segments)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(label_path))
    label_node = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(label_node)
    scene.AddNode(storage)
    label_node.SetAndObserveStorageNodeID(storage.GetID())
    try:
        if not storage.ReadData(label_node):
            raise MedSegError(f"{label_path}: Slicer could not read the label image")
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        if reference_volume is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation_node):
            raise MedSegError(f"{label_path}: importing the labels as segments failed")
        segmentation = segmentation_node.GetSegmentation()
        specs = {spec["value"]: spec for spec in segment_specs(model)}
        present = set()
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            spec = specs.get(segment.GetLabelValue())
            if spec is None:
                raise MedSegError(f"{label_path}: label value {segment.GetLabelValue()} is not one of the model's labels")
            segment.SetName(spec["name"])
            segment.SetColor(*spec["colour"])
            present.add(spec["value"])
        for value, spec in sorted(specs.items()):
            if value not in present:
                segmentation.AddEmptySegment(spec["name"], spec["name"], list(spec["colour"]))
        return segmentation_node
    finally:
        scene.RemoveNode(label_node)
        scene.RemoveNode(storage)
