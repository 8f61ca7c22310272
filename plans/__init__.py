"""medseg_plans: preset plans shipped with medseg (JSON files beside this module)."""

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent
