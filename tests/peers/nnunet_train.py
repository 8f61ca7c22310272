"""Plan, preprocess and briefly train one fold with nnunetv2's own code, giving a real nnU-Net v2
model folder (``nnUNetTrainer__nnUNetPlans__CONFIGURATION``) for the tests that read nnU-Net models
(a subprocess: nnunetv2 reads its folders from the environment at import time).

usage: python -m tests.peers.nnunet_train RAW_ROOT DATASET_ID WORK_FOLDER CONFIGURATION ITERATIONS [PLANNER [GPU_MEMORY_GB]]
(PLANNER: nnU-Net's experiment planner class, ExperimentPlanner by default, e.g. nnUNetPlannerResEncM.
CONFIGURATION 3d_cascade_fullres trains 3d_lowres on all five folds first, as nnU-Net's cascade needs:
its validations write the out-of-fold segmentations the cascade trains on.)"""

import os
import sys


def main() -> None:
    raw_root, dataset_id, work, configuration, iterations = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    planner = sys.argv[6] if len(sys.argv) > 6 else "ExperimentPlanner"
    memory = float(sys.argv[7]) if len(sys.argv) > 7 else None
    os.environ.update(
        nnUNet_raw=raw_root, nnUNet_preprocessed=os.path.join(work, "preprocessed"), nnUNet_results=os.path.join(work, "results"),
        nnUNet_compile="false",
    )
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.manual_seed(0)
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
    plans_name = plan_experiments([dataset_id], planner, gpu_memory_target_in_gb=memory)
    cascade = configuration == "3d_cascade_fullres"
    stages = ("3d_lowres", "3d_fullres") if cascade else (configuration,)  # the cascade reads 3d_fullres's data
    preprocess([dataset_id], plans_name, configurations=stages, num_processes=(1,) * len(stages), verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in this process (planning above needs it unset)
    runs = [("3d_lowres", fold) for fold in range(5)] + [(configuration, 0)] if cascade else [(configuration, 0)]
    for name, fold in runs:
        trainer = get_trainer_from_args(str(dataset_id), name, fold, "nnUNetTrainer", plans_name, device=torch.device("cpu"))
        trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch, trainer.num_epochs = iterations, 1, 1
        trainer.run_training()
        if cascade and name == "3d_lowres":  # its validation writes predicted_next_stage/, what the cascade trains on
            trainer.perform_actual_validation(False)
        print("MODEL=" + trainer.output_folder_base)


if __name__ == "__main__":
    main()
