"""Two processes on localhost with jax.distributed train the same members as one process.

``python train.py --distributed --strategy sharded`` is started twice, as process 0 and 1 of a
``jax.distributed`` run over the loopback interface (CPU collectives through gloo), each with
two simulated CPU devices: the group's four members are split over four devices in two
processes (mesh member=4 data=1), or, on a 2-D mesh (member=2 data=2), two members per
process with each member's batch split over the process's two devices.

Two references, each compared without a tolerance or with one that is derived:
- the same mesh on four of this process's eight devices: the same arithmetic, so the scores,
  CSV log and orbax checkpoint must be bit-identical (measured: they are);
- the ``loop`` strategy on one device, which shares nothing with the sharded path: with
  members alone on their devices it is the same arithmetic too (bit-identical, measured);
  with a data axis the gradient of a batch is the mean of two half-batch means, another
  order of float32 sums that training amplifies, so the scores and losses agree within the
  spread of the member strategies on one device (``trainer_testing.STRATEGY_SPREAD``; measured
  here 1.8e-7 in scores, and 2.2e-5 in a checkpoint's parameters on a loaded machine, which is
  why parameters are only compared with the same-mesh run).
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from trainer_testing import STRATEGY_SPREAD

import train
import training

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
PROCESSES = 2
DEVICES_PER_PROCESS = 2
RUN_TIMEOUT_S = 240  # each process; a hung collective must fail the test, not stall it
RUN_ARGS = [
    "--optimizers", "dgrad:4",
    "--model", "resnet_tiny",
    "--image-size", "8",
    "--epochs", "1",
    "--folds", "0",
    "--batch-size", "64",
    "--checkpoint-every", "1",
    "--keep-checkpoints",
    "--no-progress",
]  # fmt: skip
MESHES = {"member-axis": [], "member-and-data-axes": ["--mesh", "member=2,data=2"]}
pytestmark = pytest.mark.slow


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_process_run(out_dir: str, log_dir: str, mesh_args: list[str]) -> list[str]:
    """Runs the trainer as a 2-process jax.distributed job and returns each process's output."""
    port = free_loopback_port()
    env = {
        key: value
        for key, value in os.environ.items()
        # gRPC would send the coordinator's loopback traffic through a proxy.
        if "proxy" not in key.lower()
    }
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
        JAX_PLATFORMS="cpu",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(PROCESSES),
    )
    command = [sys.executable, TRAIN_SCRIPT, "--distributed", "--strategy", "sharded",
               *RUN_ARGS, *mesh_args, "--out-dir", out_dir]  # fmt: skip
    processes, outputs = [], []
    try:
        for process_id in range(PROCESSES):
            # Output goes to files: a full pipe would block one process and, through the
            # collectives, the other.
            output = open(os.path.join(log_dir, f"process{process_id}.log"), "w+")
            outputs.append(output)
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=os.path.dirname(TRAIN_SCRIPT),
                    env={**env, "JAX_PROCESS_ID": str(process_id)},
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
        codes = [process.wait(timeout=RUN_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        texts = []
        for output in outputs:
            output.seek(0)
            texts.append(output.read())
            output.close()
    for process_id, (code, text) in enumerate(zip(codes, texts, strict=True)):
        assert code == 0, f"process {process_id} exited with {code}:\n{text[-3000:]}"
    return texts


def restore_checkpoint(run_dir: str, step: int) -> dict:
    """The trainer's fold-0 checkpoint as NumPy arrays, on any topology."""
    path = os.path.join(run_dir, "checkpoints", "fold0", "members", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=as_numpy)


def read_log(run_dir: str) -> list[dict[str, str]]:
    with open(os.path.join(run_dir, "logs", "fold0", "dgrad.csv"), newline="") as f:
        return list(csv.DictReader(f))


def run_in_this_process(out_dir: str, *args: str, devices=None) -> str:
    config = train.config_from_args(
        train.build_parser().parse_args([*RUN_ARGS, *args, "--out-dir", out_dir])
    )
    training.train_ensemble(config, progress=False, devices=devices)
    return out_dir


@pytest.fixture
def loop_run(session_cache) -> str:
    """The run directory of the 1-process loop run (made once per session)."""
    make = lambda directory: run_in_this_process(str(directory / "run"), "--strategy", "loop")  # noqa: E731
    return str(session_cache.directory("distributed-loop", make) / "run")


@pytest.fixture(params=list(MESHES))
def runs(request, session_cache, loop_run) -> dict[str, str]:
    """The run directories of a 2-process sharded run and of its two 1-process references,
    made once per session and mesh."""
    mesh = MESHES[request.param]

    def make(directory: Path) -> None:
        launch_two_process_run(str(directory / "two_processes"), str(directory), mesh)
        run_in_this_process(str(directory / "same_mesh"), "--strategy", "sharded", *mesh,
                            devices=jax.devices()[: PROCESSES * DEVICES_PER_PROCESS])  # fmt: skip

    directory = session_cache.directory(f"distributed-{request.param}", make)
    return {"two": str(directory / "two_processes"), "same_mesh": str(directory / "same_mesh"),
            "loop": loop_run, "mesh": request.param,
            **{f"output{p}": (directory / f"process{p}.log").read_text()
               for p in range(PROCESSES)}}  # fmt: skip


def read_scores(run_dir: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(run_dir, "scores", "fold0", "dgrad.npz")) as f:
        return {key: f[key] for key in f.files}


def test_two_processes_each_hold_two_of_four_devices(runs):
    expected = "member=4 data=1" if runs["mesh"] == "member-axis" else "member=2 data=2"
    assert f"member strategy: sharded, mesh {expected}" in runs["output0"]
    # Only process 0 reports; the other computes its members silently.
    assert "| dgrad | 4 |" in runs["output0"]
    assert "| dgrad |" not in runs["output1"]


def test_two_processes_give_the_same_scores_as_one(runs):
    two, same_mesh, loop = (read_scores(runs[name]) for name in ("two", "same_mesh", "loop"))
    assert two.keys() == same_mesh.keys() == loop.keys()
    assert two["scores"].shape == loop["scores"].shape == (4, len(loop["labels"]), 10)
    for key in two:
        np.testing.assert_array_equal(two[key], same_mesh[key], err_msg=key)
    np.testing.assert_allclose(two["scores"], loop["scores"], rtol=0, atol=STRATEGY_SPREAD)
    for key in loop.keys() - {"scores"}:
        np.testing.assert_array_equal(two[key], loop[key], err_msg=key)
    # The members are really different networks, so equal scores are not a coincidence.
    assert np.abs(loop["scores"][0] - loop["scores"][1]).max() > 1e-3


def test_two_processes_log_the_same_losses_as_one(runs):
    two, same_mesh, loop = (read_log(runs[name]) for name in ("two", "same_mesh", "loop"))
    assert two == same_mesh
    assert [row["member"] for row in two] == [row["member"] for row in loop] == ["0", "1", "2", "3"]
    losses = [[float(row["loss"]) for row in log] for log in (two, loop)]
    np.testing.assert_allclose(*losses, atol=STRATEGY_SPREAD)


def test_the_checkpoint_written_by_both_processes_holds_every_member(runs):
    two, one = restore_checkpoint(runs["two"], 1), restore_checkpoint(runs["same_mesh"], 1)
    assert jax.tree.structure(two) == jax.tree.structure(one)
    leaves_two, leaves_one = jax.tree.leaves(two), jax.tree.leaves(one)
    assert len(leaves_one) > 10
    for leaf_two, leaf_one in zip(leaves_two, leaves_one, strict=True):
        assert leaf_two.shape == leaf_one.shape and leaf_one.shape[0] == 4
        np.testing.assert_array_equal(leaf_two, leaf_one)


def test_two_processes_load_imagenet_weights_into_every_member(tmp_path):
    # Every process reads the stacked heads of a mesh that spans both (issue: np.asarray on
    # a multi-process array raised); each member then starts from the file's body.
    from pretrained_exporters import save_torchvision_safetensors

    import models

    model = models.get_model("resnet_tiny", num_classes=10, stride_placement="v1.5")
    donor = model.init(jax.random.key(7), np.zeros((1, 8, 8, 3), np.float32), train=False)
    weights = tmp_path / "donor.safetensors"
    save_torchvision_safetensors(dict(donor), weights)
    run = tmp_path / "run"
    launch_two_process_run(str(run), str(tmp_path),
                           ["--weights", str(weights), "--stride-placement", "v1.5"])  # fmt: skip
    scores = read_scores(str(run))
    assert scores["scores"].shape[0] == 4 and np.isfinite(scores["scores"]).all()

