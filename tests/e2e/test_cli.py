"""The command line as a user meets it: fast help, one-line errors, the quick-start command."""

import subprocess
import sys

from tests.conftest import run_cli


def test_help_imports_no_heavy_library():
    code = "import sys, medseg.cli; heavy = [m for m in ('torch', 'nibabel', 'SimpleITK', 'pydicom', 'scipy') if m in sys.modules]; print(heavy)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    assert "plan-and-train" in run_cli("--help", check=True).stdout


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path):
    result = run_cli("info", tmp_path / "missing.nii.gz")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.nii.gz'}: no such file or folder"]
    debug = run_cli("--debug", "info", tmp_path / "missing.nii.gz")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_info_and_convert_dicom_to_nifti(shared_data, tmp_path):
    series = shared_data / "ct-mr-totalsegmentator" / "example_ct_dicom"
    info = run_cli("info", series, check=True).stdout
    assert "(1, 20, 512, 512)" in info and "SeriesInstanceUID is empty" in info
    run_cli("convert", series, tmp_path / "ct.nii.gz", check=True)
    listing = run_cli("dicom", "list", shared_data / "dicom-seg-highdicom", check=True).stdout
    assert "Segmentation" in listing


def test_plan_and_train_demo_builds_checks_and_trains(tmp_path):
    """The README's main command, with one fold and a token training length (the full run is
    measured, not tested: see README)."""
    args = ("--folds", "0", "--epochs", "1", "--iterations-per-epoch", "2")
    result = run_cli("plan-and-train", "--task", "AbdomenMRI", "--demo", *args, root=tmp_path, check=True)
    assert "30 training cases, 0 error(s)" in result.stdout
    assert "3d_fullres cross-validation: 6 cases" in result.stdout and "foreground mean" in result.stdout
    assert (tmp_path / "raw" / "Dataset901_AbdomenMRI-demo" / "dataset.json").is_file()
    missing = run_cli("plan-and-train", "--task", "AbdomenMRI", root=tmp_path)
    assert missing.returncode == 1 and "--demo" in missing.stderr


def test_kernels_command_lists_backends():
    listing = run_cli("kernels", check=True).stdout
    assert "selective_scan" in listing and "cpu      available" in listing and "ref      available" in listing
    mlstm_section = listing[listing.index("mlstm"):listing.index("selective_scan")]
    assert "triton" in mlstm_section and "chunkwise" in mlstm_section
