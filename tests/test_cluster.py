"""Where build work runs: one worker per GPU here (dask-cuda), SLURM jobs of one GPU each (dask-jobqueue), and
set-up calls that run on a worker, not in the coordinator."""

from __future__ import annotations

import inspect
import os

import pytest

from preprocess.build_common import coordinator_teacher
from preprocess.cluster import local_placement, open_executor, parse_cluster_options, slurm_cluster, visible_gpus


def test_one_worker_per_gpu_and_never_two_on_one():
    assert local_placement(3, []).kind == "cpu" and local_placement(3, []).workers == 3
    two = local_placement(2, ["0", "1", "2", "3"])
    assert two.kind == "cuda" and two.devices == ("0", "1") and two.note == ""
    capped = local_placement(8, ["0", "1", "2", "3"])
    assert capped.workers == 4 and capped.devices == ("0", "1", "2", "3")
    assert "8 workers asked, 4 GPUs visible: starting 4 (one worker per GPU)" in capped.note
    kwargs = capped.cluster_kwargs()
    assert kwargs["CUDA_VISIBLE_DEVICES"] == ["0", "1", "2", "3"] and kwargs["n_workers"] == 4
    assert kwargs["threads_per_worker"] == 1


def test_local_cuda_cluster_accepts_the_placement(monkeypatch):
    """Every argument we pass is one dask-cuda's LocalCUDACluster (or the LocalCluster under it) takes."""
    from dask.distributed import LocalCluster
    from dask_cuda import LocalCUDACluster

    accepted = set(inspect.signature(LocalCUDACluster.__init__).parameters) | \
        set(inspect.signature(LocalCluster.__init__).parameters)
    assert set(local_placement(2, ["3", "7"]).cluster_kwargs()) <= accepted
    assert set(local_placement(2, []).cluster_kwargs()) <= set(inspect.signature(LocalCluster.__init__).parameters)


def test_visible_gpus_respect_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    assert local_placement(4, visible_gpus()).devices == ("2", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == [] and local_placement(2, visible_gpus()).kind == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import torch

    assert visible_gpus() == [str(i) for i in range(torch.cuda.device_count())]  # unset: every device torch sees


def test_slurm_job_script_asks_for_one_gpu_per_worker():
    options = parse_cluster_options(["queue=gpu", "account=proj42", "walltime=04:00:00", "jobs=4", "cores=12",
                                     "memory=96GB", "job-extra=--constraint=a100", "prologue=module load cuda/12.4",
                                     "prologue=source ~/venv/bin/activate"])
    cluster, jobs = slurm_cluster(options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 4
    for line in ("#SBATCH -p gpu", "#SBATCH -A proj42", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --constraint=a100", "#SBATCH -J teacher-cache",
                 "module load cuda/12.4", "source ~/venv/bin/activate"):
        assert line in script, (line, script)
    worker = next(x for x in script.splitlines() if "distributed.cli.dask_worker" in x)
    assert "--nthreads 1" in worker and "--nworkers" not in worker  # one process, one build thread
    assert script.index("module load cuda/12.4") < script.index("dask_worker")


def test_slurm_cpu_partition_and_default_job_count():
    cluster, jobs = slurm_cluster(parse_cluster_options(["gpus=0"]), workers=3)
    try:
        assert jobs == 3 and "--gres" not in cluster.job_script()
    finally:
        cluster.close()


@pytest.mark.parametrize("pairs,words", [
    (["queue"], "expected KEY=VALUE"),
    (["partition=gpu"], "'partition' is not known; known keys: jobs"),
])
def test_bad_cluster_options_are_explained(pairs, words):
    with pytest.raises(ValueError, match=words):
        parse_cluster_options(pairs)


def test_more_than_one_gpu_per_slurm_job_is_refused():
    with pytest.raises(ValueError, match="one worker on one GPU .gpus=1.*jobs=N"):
        slurm_cluster(parse_cluster_options(["gpus=4"]))


def test_executor_options_that_contradict_each_other_are_refused():
    with pytest.raises(ValueError, match="leave out --scheduler"):
        with open_executor(scheduler="tcp://head:8786", cluster="slurm"):
            pass
    with pytest.raises(ValueError, match="only applies with --cluster slurm"):
        with open_executor(workers=2, cluster_options=("queue=gpu",)):
            pass


def test_set_up_calls_run_on_a_worker_and_the_coordinator_keeps_teachers_on_the_cpu():
    with open_executor(workers=1, progress=False) as ex:
        assert ex.call(os.getpid) != os.getpid()
        assert sorted(ex.map(pow, [(2, 3), (3, 2)], [1, 1])) == [8, 9]
    with open_executor(progress=False) as here:
        assert here.call(os.getpid) == os.getpid()
    assert coordinator_teacher("clip-tiny").device.type == "cpu"


def test_a_client_that_fails_to_close_neither_hides_the_builds_own_error_nor_adds_a_traceback(monkeypatch, capfd):
    from dask.distributed import Client

    real_close = Client.close

    def close(self, *args, **kwargs):
        real_close(self, *args, **kwargs)
        raise OSError("Timed out trying to connect to the scheduler")

    monkeypatch.setattr(Client, "close", close)
    with pytest.raises(ValueError, match="^the build's own error$"):
        with open_executor(workers=1, progress=False) as ex:
            assert ex.call(abs, -2) == 2
            raise ValueError("the build's own error")
    assert capfd.readouterr().err.strip() == (
        "warning: the Dask cluster did not close cleanly (OSError: Timed out trying to connect to the scheduler); "
        "nothing the build wrote is affected")
    with open_executor(workers=1, progress=False) as ex:  # a normal exit stays normal: no exception, one line
        assert ex.call(abs, -3) == 3
    assert capfd.readouterr().err.count("\n") == 1


def test_a_set_up_call_whose_worker_dies_is_an_environment_failure():
    import dask
    import dask.distributed  # noqa: F401 - its config defaults, before dask.config.set (which drops new keys)

    from preprocess.errors import EnvironmentFailure

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with open_executor(workers=1, progress=False) as ex:
            with pytest.raises(EnvironmentFailure, match=r"the Dask worker running _exit died \(1 attempt, last"):
                ex.call(os._exit, 1)


def test_a_local_cluster_starts_quietly_while_another_holds_the_default_http_port():
    """Two builds on one node: the second scheduler's HTTP server must not want the first one's port 8787."""
    import socket
    import warnings

    from dask.distributed import LocalCluster

    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        held.bind(("0.0.0.0", 8787))
        held.listen()
    except OSError:
        pass  # something already listens there, which is the case under test too
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kwargs = local_placement(1, []).cluster_kwargs()
            with LocalCluster(**kwargs) as cluster:
                addresses = [s.getsockname() for s in cluster.scheduler.http_server._sockets.values()]
        assert not [w for w in caught if "already in use" in str(w.message)], [str(w.message) for w in caught]
        assert addresses and all(a[0] == "127.0.0.1" and a[1] != 8787 for a in addresses), addresses
    finally:
        held.close()
