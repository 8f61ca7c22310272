"""Plan, preprocess and briefly train one fold with nnunetv2's own code, giving a real nnU-Net v2
model folder (``nnUNetTrainer__nnUNetPlans__CONFIGURATION``) for the tests that read nnU-Net models
(a subprocess: nnunetv2 reads its folders from the environment at import time).

usage: python -m tests.peers.nnunet_train RAW_ROOT DATASET_ID WORK_FOLDER CONFIGURATION ITERATIONS"""

import os
import sys


def main() -> None:
    raw_root, dataset_id, work, configuration, iterations = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    os.environ.update(
        nnUNet_raw=raw_root, nnUNet_preprocessed=os.path.join(work, "preprocessed"), nnUNet_results=os.path.join(work, "results"),
        nnUNet_compile="false",
    )
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.manual_seed(0)
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=(configuration,), num_processes=(1,), verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in this process (planning above needs it unset)
    trainer = get_trainer_from_args(str(dataset_id), configuration, 0, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu"))
    trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch, trainer.num_epochs = iterations, 1, 1
    trainer.run_training()
    print("MODEL=" + trainer.output_folder_base)


if __name__ == "__main__":
    main()
