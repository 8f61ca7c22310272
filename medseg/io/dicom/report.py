"""DICOM SR of a prediction: a TID 1500 Measurement Report (highdicom's Comprehensive 3D SR) whose
measurement groups reference the DICOM SEG's segments and, through them, the source series.

Per structure present in the SEG: its volume (mL; area in mm² for a projection image), the mean
intensity inside it (the attenuation coefficient in HU for CT) and, for a calibrated model, its
expected Dice. For the case: whether medseg
recommends a review (a qualitative evaluation, yes or no) and each input-check finding as a comment
with its numbers. Codes: SNOMED CT and DICOM where they exist; the review item uses medseg's own
coding scheme ``99MEDSEG`` (declared in the object), as do the expected Dice and the mean intensity
of a non-CT image, as DICOM allows for local concepts."""

from __future__ import annotations

from pathlib import Path

from medseg.atomic import atomic_path
from medseg.errors import MedsegError
from medseg.io.dicom.derived import Algorithm
from medseg.io.dicom.sources import DicomSources

SERIES_NUMBER_SR = 9903
LOCAL_SCHEME = "99MEDSEG"


def _local_codes():
    from pydicom.sr.coding import Code

    return {
        "review": Code("REVIEW", LOCAL_SCHEME, "Review recommended"),
        "mean_intensity": Code("MEANINT", LOCAL_SCHEME, "Mean image intensity"),
        "expected_dice": Code("EXPDICE", LOCAL_SCHEME, "Expected Dice similarity coefficient"),
    }


def _procedure(modality: str):
    from pydicom.sr.codedict import codes

    return {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion}.get(modality.upper(), codes.SCT.ImagingProcedure)


def _segment_numbers(seg) -> dict[str, int]:
    return {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}


def write_dicom_sr(seg_path: Path, measurements: dict, audit: dict, sources: DicomSources, algorithm: Algorithm, target: Path) -> Path:
    """``measurements``: medseg.audit.measurements.measure_structures of the case; ``audit``: the
    case's ``review`` ({"flag", "reasons"}), ``input_checks`` (findings or None) and
    ``expected_dice`` (label -> {"expected_dice", ...} or None)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    seg = pydicom.dcmread(seg_path)
    numbers = _segment_numbers(seg)
    local = _local_codes()
    modality = str(sources.datasets[0].get("Modality", ""))
    ct = modality.upper() == "CT"
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name[:64], version=algorithm.version)
    groups = []
    for structure in measurements["structures"]:
        if structure["label"][:64] not in numbers or not structure["voxels"]:
            continue
        items = []
        if "volume_ml" in structure:
            items.append(hd.sr.Measurement(name=codes.SCT.Volume, value=structure["volume_ml"], unit=Code("ml", "UCUM", "milliliter"), algorithm_id=algorithm_id))
        else:
            items.append(hd.sr.Measurement(name=codes.SCT.Area, value=structure["area_mm2"], unit=codes.UCUM.SquareMillimeter, algorithm_id=algorithm_id))
        if "0" in structure["intensity"]:
            items.append(hd.sr.Measurement(
                name=codes.DCM.AttenuationCoefficient if ct else local["mean_intensity"], value=structure["intensity"]["0"]["mean"],
                unit=codes.UCUM.HounsfieldUnit if ct else codes.UCUM.NoUnits, derivation=codes.SCT.Mean, algorithm_id=algorithm_id,
            ))
        expected = (audit.get("expected_dice") or {}).get(structure["label"])
        if expected:  # the calibrated estimate of this structure's Dice (medseg.audit.calibration)
            items.append(hd.sr.Measurement(name=local["expected_dice"], value=expected["expected_dice"], unit=codes.UCUM.NoUnits, algorithm_id=algorithm_id))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{structure['label']} (label {structure['value']})"[:64]),
            referenced_segment=_referenced_segment(seg, numbers[structure["label"][:64]]),
            finding_type=_finding_type(seg, numbers[structure["label"][:64]]), measurements=items,
        ))
    review = audit.get("review") or {"flag": False, "reasons": []}
    case_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="medseg case review"),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(local["review"], codes.SCT.Yes if review["flag"] else codes.SCT.No)],
    )
    for finding in audit.get("input_checks") or []:
        case_group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=f"input {finding['check']}: {finding['message']}"[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    groups.append(case_group)
    observation_context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=algorithm.name[:64], manufacturer_name=algorithm.manufacturer),
    ))
    try:
        report = hd.sr.MeasurementReport(observation_context=observation_context, procedure_reported=_procedure(modality), imaging_measurements=groups)
        document = hd.sr.Comprehensive3DSR(
            evidence=[*sources.datasets, seg], content=report, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER_SR,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=algorithm.manufacturer, is_complete=True,
            series_description=f"SR {algorithm.name}"[:64],
        )
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise MedsegError(f"cannot build a DICOM SR for {target.name}: {error}") from None
    _declare_local_scheme(document)
    with atomic_path(target) as temporary:
        document.save_as(temporary)
    return target


def _referenced_segment(seg, number: int):
    """The segment and the series it was made from (highdicom's ``from_segmentation`` reads per-frame
    segment references, which a SEG of one segment keeps in its shared functional groups)."""
    import highdicom as hd

    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID),
    )


def _finding_type(seg, number: int):
    from highdicom.sr import CodedConcept

    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == number:
            code = item.SegmentedPropertyTypeCodeSequence[0]
            return CodedConcept(value=code.CodeValue, scheme_designator=code.CodingSchemeDesignator, meaning=code.CodeMeaning)
    return None


def _declare_local_scheme(document) -> None:
    """The Coding Scheme Identification of ``99MEDSEG``, so a reader knows whose codes they are."""
    from pydicom.dataset import Dataset

    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "medseg local concepts"
    scheme.CodingSchemeResponsibleOrganization = "medseg"
    existing = list(document.get("CodingSchemeIdentificationSequence", []))
    if not any(item.CodingSchemeDesignator == LOCAL_SCHEME for item in existing):
        document.CodingSchemeIdentificationSequence = [*existing, scheme]
