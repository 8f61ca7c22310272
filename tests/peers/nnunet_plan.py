"""Run nnunetv2's fingerprint + default ExperimentPlanner on a raw dataset (a subprocess of the
plan-equality tests: nnunetv2 reads its folders from the environment at import time).

usage: python -m tests.peers.nnunet_plan RAW_ROOT DATASET_ID WORK_FOLDER GPU_MEMORY_GB [PLANNER_CLASS]
(PLANNER_CLASS: ExperimentPlanner by default, or nnUNetPlannerResEncM / L / XL, or several joined by
commas, each printed as a PLANS= line; GPU_MEMORY_GB 0:
the planner's own target)"""

import json
import os
import sys


def main() -> None:
    raw_root, dataset_id, work, memory = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    planner = sys.argv[5] if len(sys.argv) > 5 else "ExperimentPlanner"
    os.environ["nnUNet_raw"] = raw_root
    os.environ["nnUNet_preprocessed"] = os.path.join(work, "preprocessed")
    os.environ["nnUNet_results"] = os.path.join(work, "results")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    extract_fingerprints([dataset_id], num_processes=2, check_dataset_integrity=False, clean=True, verbose=False)
    name = convert_id_to_dataset_name(dataset_id)
    for planner_class in planner.split(","):  # one fingerprint, several planners
        plans_name = plan_experiments([dataset_id], planner_class, gpu_memory_target_in_gb=memory or None)
        print("PLANS=" + json.dumps(os.path.join(work, "preprocessed", name, f"{plans_name}.json")))


if __name__ == "__main__":
    main()
