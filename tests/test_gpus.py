"""GPU ownership without GPUs: fake ids in SEGFLOW_GPU_IDS, leases held by real processes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from segflow import gpus
from segflow.errors import SegflowError

HOLD = (
    "import sys, time\n"
    "from segflow import gpus\n"
    "with gpus.lease(int(sys.argv[1])) as ids:\n"
    "    print(','.join(ids), flush=True)\n"
    "    time.sleep(60)\n"
)


def test_worker_gpu_ids_come_from_the_environment_before_nvidia_smi():
    assert gpus.worker_gpu_ids({"SEGFLOW_GPU_IDS": " 0, 3 ,5"}) == ["0", "3", "5"]
    assert gpus.worker_gpu_ids({"SEGFLOW_GPU_IDS": ""}) == []
    assert gpus.training_slots(3, {"SEGFLOW_GPU_IDS": ""}) == 3  # no GPU: the CPU setting
    assert gpus.training_slots(3, {"SEGFLOW_GPU_IDS": "0,1,2,3,4", "SEGFLOW_GPUS_PER_TRAINING": "2"}) == 2
    with pytest.raises(SegflowError, match="owns 2 GPU"):
        gpus.gpus_per_training({"SEGFLOW_GPU_IDS": "0,1", "SEGFLOW_GPUS_PER_TRAINING": "3"})


def test_leases_in_two_processes_are_disjoint_and_a_killed_holder_frees_its_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGFLOW_GPU_IDS", "0,1,2")
    monkeypatch.setenv("SEGFLOW_GPU_LOCK_DIR", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "2"], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        held = set(holder.stdout.readline().strip().split(","))
        assert len(held) == 2
        with gpus.lease(1) as mine:
            assert len(mine) == 1 and not held & set(mine)
            assert gpus.child_env(mine)["CUDA_VISIBLE_DEVICES"] == mine[0]
            assert gpus.child_env(mine)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        started = time.monotonic()
        with gpus.lease(3) as everything:  # the kernel released the killed holder's locks
            assert sorted(everything) == ["0", "1", "2"]
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()


def test_parallel_trainings_on_a_cpu_machine_share_its_cores():
    from segflow.train_process import cpu_threads_per_training

    assert cpu_threads_per_training(2, cores=2) == 1  # the demo on 2 cores: one thread each
    assert cpu_threads_per_training(2, cores=16) == 8
    assert cpu_threads_per_training(1, cores=16) == 16
    assert cpu_threads_per_training(3, cores=2) == 1  # never zero
