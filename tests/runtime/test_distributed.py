"""Data-parallel helpers: upstream's batch split and per-rank oversampling, rank environment, and the
launcher (a failing rank stops the others; a killed launcher leaves no ranks behind)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pnnunet.errors import PnnunetError
from pnnunet.runtime import distributed as dist
from pnnunet.training.sampling import forced_foreground_mask
from tests.processes import process_alive, wait_until_gone
from tests.conftest import REPO


def test_batch_split_as_upstream():
    assert dist.rank_batch_sizes(2, 2) == [1, 1]
    assert dist.rank_batch_sizes(5, 2) == [3, 2]
    assert dist.rank_batch_sizes(7, 4) == [2, 2, 2, 1]
    assert dist.rank_batch_sizes(12, 1) == [12]
    with pytest.raises(PnnunetError, match=r"-num_gpus 4.*\n  fix: use at most -num_gpus 2"):
        dist.rank_batch_sizes(2, 4)


def test_oversampling_per_rank_examples():
    # bs 2, p 0.33: the global batch forces sample 1 -> rank 0 none, rank 1 all
    assert [dist.rank_batch_and_oversample(2, 2, r, 0.33) for r in range(2)] == [(1, 0.0), (1, 1.0)]
    # bs 5 over 2 ranks: forced samples 3, 4 (round(5 * 0.67) = 3) -> all in rank 1's slice [3, 5)
    assert [dist.rank_batch_and_oversample(5, 2, r, 0.33) for r in range(2)] == [(3, 0.0), (2, 1.0)]
    # bs 12 over 5 ranks: sizes [3,3,2,2,2], forced 8..11 -> slices [6,8) none, [8,10) all, [10,12) all
    got = [dist.rank_batch_and_oversample(12, 5, r, 0.33) for r in range(5)]
    assert got == [(3, 0.0), (3, 0.0), (2, 0.0), (2, 1.0), (2, 1.0)]
    assert dist.rank_batch_and_oversample(9, 1, 0, 0.33) == (9, 0.33)


@pytest.mark.parametrize("p", [0.33, 0.5, 0.1, 0.9])
def test_ranks_force_exactly_the_global_batch_samples(p):
    """The loader's rule on each rank (round(b·(1-f))) reproduces the forced samples of its slice."""
    for bs in range(1, 25):
        glob = forced_foreground_mask(bs, p)
        for n in range(1, bs + 1):
            sizes = dist.rank_batch_sizes(bs, n)
            for r in range(n):
                b, f = dist.rank_batch_and_oversample(bs, n, r, p)
                lo = sum(sizes[:r])
                assert b == sizes[r]
                assert sum(forced_foreground_mask(b, f)) == sum(glob[lo:lo + b]), (bs, n, r)


def test_context_from_env_and_gpu_selection():
    ctx = dist.DistContext.from_env({"PADDLE_TRAINER_ID": "3", "PADDLE_TRAINERS_NUM": "8", "PADDLE_LOCAL_RANK": "1",
                                     "PADDLE_LOCAL_SIZE": "4"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (3, 8, 1, 4)
    assert ctx.is_distributed and not ctx.is_main
    assert not dist.DistContext.from_env({}).is_distributed
    assert dist.selected_gpu({"FLAGS_selected_gpus": "2", "PADDLE_LOCAL_RANK": "0"}) == 2
    assert dist.selected_gpu({"PADDLE_LOCAL_RANK": "1", "PADDLE_TRAINERS_NUM": "2"}) == 1
    assert dist.shard(list("abcde"), ctx) == ["d"]
    assert dist.shard(list("abcde"), dist.DistContext(0, 2)) == ["a", "c", "e"]
    assert dist.rank_seed(12345, 0) == 12345 and dist.rank_seed(12345, 1) != 12345


def test_rank_environments():
    envs = dist.rank_environments(2, gpu=True, base_env={})
    assert [e["PADDLE_TRAINER_ID"] for e in envs] == ["0", "1"]
    assert [e["FLAGS_selected_gpus"] for e in envs] == ["0", "1"]
    assert envs[0]["PADDLE_DISTRI_BACKEND"] == "nccl" and envs[0]["PADDLE_MASTER"] == envs[1]["PADDLE_MASTER"]
    assert envs[1]["PADDLE_TRAINER_ENDPOINTS"].split(",")[1] == envs[1]["PADDLE_CURRENT_ENDPOINT"]
    cpu = dist.rank_environments(2, gpu=False, base_env={"FLAGS_selected_gpus": "0"})
    assert cpu[0]["PADDLE_DISTRI_BACKEND"] == "gloo" and "FLAGS_selected_gpus" not in cpu[0]


def test_failing_rank_stops_the_others(monkeypatch):
    monkeypatch.setattr(dist, "STOP_GRACE_SECONDS", 2.0)
    # rank 1 fails at once; rank 0 would wait forever (as in a collective) and even ignores SIGTERM
    child = ("import os, signal, sys, time\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "sys.exit(3) if os.environ['PADDLE_TRAINER_ID'] == '1' else time.sleep(600)")
    t = time.time()
    assert dist.launch_local([sys.executable, "-c", child], 2, gpu=False, poll_seconds=0.1) == 3
    assert time.time() - t < 30




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_launcher_leaves_no_ranks(tmp_path, sig):
    child = textwrap.dedent(f"""
        import os, time
        from pnnunet.runtime.distributed import tie_to_launcher
        tie_to_launcher()
        open(os.path.join({str(tmp_path)!r}, "rank" + os.environ["PADDLE_TRAINER_ID"]), "w").write(str(os.getpid()))
        time.sleep(600)
    """)
    launcher = ("import sys\nfrom pnnunet.runtime.distributed import launch_local\n"
                f"sys.exit(launch_local([sys.executable, '-c', {child!r}], 2, gpu=False))")
    proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=REPO, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not all((tmp_path / f"rank{r}").exists() for r in range(2)) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        pids = [int((tmp_path / f"rank{r}").read_text()) for r in range(2)]
        assert all(process_alive(p) for p in pids)
        proc.send_signal(sig)  # SIGKILL: the launcher cannot clean up, the ranks must notice themselves
        proc.wait(timeout=60)
        assert wait_until_gone(pids, 20), "ranks outlived their launcher"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
