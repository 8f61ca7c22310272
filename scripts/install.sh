#!/usr/bin/env bash
# Install medseg into ./.venv: torch's CPU build first (pinned), then medseg with its extras under
# the same pin. Extras via MEDSEG_EXTRAS (default "dev"; e.g. "dev,peers,dicom,serve"; "peers"
# adds nnunetv2 and TotalSegmentator, the references the equality tests and benchmarks compare against).
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
extras=${MEDSEG_EXTRAS:-dev}
if ! "$python_bin" -m venv --help >/dev/null 2>&1 || ! "$python_bin" -c "import ensurepip" >/dev/null 2>&1; then
  echo "installing python3-venv (Debian)" >&2
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[${extras}]"
if [[ ",${extras}," == *",peers,"* ]]; then
  # nnunetv2's declared dependencies would pull torchvision/timm (broken on CPU): install it bare
  # TotalSegmentator likewise (its own deps add torchvision, vtk, fury...): the reference for medseg's -m TASK
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps \
    "nnunetv2==2.8.1" "dynamic-network-architectures==0.4.4" "TotalSegmentator==2.18.0"
fi
if [[ ",${extras}," == *",dicom,"* ]]; then
  # RTSTRUCT writer; its opencv-python requirement is met by opencv-python-headless (the dicom extra)
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps "rt-utils==1.2.7"
  if ! command -v dciodvfy >/dev/null 2>&1; then
    # dicom3tools' dciodvfy validates the DICOM SEG / RTSTRUCT medseg writes (tests, `medseg dicom validate`)
    echo "installing dicom3tools (Debian)" >&2
    apt-get update -qq && apt-get install -y -qq dicom3tools >/dev/null
  fi
fi
# The tests' real peers from Debian (dev extra): a PACS (Orthanc with DICOMweb) and dcmtk for the DICOM
# node's round trip (dicom), a headless Chromium for the web page's browser test (serve).
test_packages=()
if [[ ",${extras}," == *",dev,"* && ",${extras}," == *",dicom,"* ]]; then
  command -v Orthanc >/dev/null 2>&1 || test_packages+=(orthanc orthanc-dicomweb)
  command -v storescu >/dev/null 2>&1 || test_packages+=(dcmtk)
fi
if [[ ",${extras}," == *",dev,"* && ",${extras}," == *",serve,"* ]]; then
  command -v chromedriver >/dev/null 2>&1 || test_packages+=(chromium chromium-driver)
fi
if (( ${#test_packages[@]} )); then
  echo "installing test peers (Debian): ${test_packages[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${test_packages[@]}" >/dev/null
fi
.venv/bin/python -c "import torch, medseg; print(f'medseg {medseg.__version__} installed (torch {torch.__version__})')"
