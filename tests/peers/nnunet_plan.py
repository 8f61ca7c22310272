"""Run nnunetv2's fingerprint + default ExperimentPlanner on a raw dataset (a subprocess of the
plan-equality tests: nnunetv2 reads its folders from the environment at import time).

usage: python -m tests.peers.nnunet_plan RAW_ROOT DATASET_ID WORK_FOLDER GPU_MEMORY_GB"""

import json
import os
import sys


def main() -> None:
    raw_root, dataset_id, work, memory = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    os.environ["nnUNet_raw"] = raw_root
    os.environ["nnUNet_preprocessed"] = os.path.join(work, "preprocessed")
    os.environ["nnUNet_results"] = os.path.join(work, "results")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    extract_fingerprints([dataset_id], num_processes=2, check_dataset_integrity=False, clean=True, verbose=False)
    plan_experiments([dataset_id], gpu_memory_target_in_gb=memory)
    name = convert_id_to_dataset_name(dataset_id)
    plans_file = os.path.join(work, "preprocessed", name, "nnUNetPlans.json")
    print("PLANS=" + json.dumps(plans_file))


if __name__ == "__main__":
    main()
