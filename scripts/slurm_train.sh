#!/bin/bash
# fourm21-train on several GPU nodes under SLURM: srun starts one task per GPU, and Lightning reads
# each task's rank, the world size and the master address from SLURM's variables (SLURMEnvironment).
#
#   sbatch scripts/slurm_train.sh                                        # 2 nodes x 4 GPUs, as below
#   sbatch --nodes=4 scripts/slurm_train.sh experiment=coco data.root=/data/coco data.datamodule.batch_size=32
#
# Arguments are fourm21-train overrides. data.datamodule.batch_size is per GPU. The run directory is
# runs/train/slurm_<job id> (RUN_DIR=... to choose), one for all tasks; it must be on a file system that
# every node sees. Data that fourm21 generates (the default shapes set) must exist before the job: run
# `fourm21-train trainer.fast_dev_run=true` once on the login node.
#SBATCH --job-name=fourm21
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # one task per GPU: the same number as --gpus-per-node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8            # for each GPU's data-loader workers
#SBATCH --mem=0                      # all of each node's memory
#SBATCH --time=24:00:00
#SBATCH --output=fourm21_%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
RUN_DIR=${RUN_DIR:-runs/train/slurm_${SLURM_JOB_ID}}
WORKERS=$(( ${SLURM_CPUS_PER_TASK:-2} > 1 ? ${SLURM_CPUS_PER_TASK:-2} - 1 : 0 ))

# trainer.devices and trainer.num_nodes must agree with the allocation; Lightning checks them.
srun --kill-on-bad-exit=1 .venv/bin/fourm21-train trainer=ddp \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" trainer.num_nodes="${SLURM_JOB_NUM_NODES}" \
    data.datamodule.num_workers="${WORKERS}" hydra.run.dir="${RUN_DIR}" "$@"
