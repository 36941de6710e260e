"""Data parallelism: two processes (torchrun, gloo on CPU), replicated (DDP) or sharded (FSDP2),
give the same weights as one process with the same global batch (gradient accumulation 2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_loop import config

WORKER = Path(__file__).with_name("train_worker.py")
COMMON = ["train.max_steps=4", "train.batch_size=4", "train.lr_warmup_steps=0"]


def trained_weights(root: Path, method: str) -> dict[str, torch.Tensor]:
    if method == "lora":
        return load_file(root / "runs" / "t" / "adapter" / "adapter_model.safetensors")
    return load_file(root / "runs" / "t" / "model" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(("method", "sharding"), [("lora", "ddp"), ("lora", "fsdp"), ("full", "fsdp")])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, method, sharding):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    single, double = tmp_path / "one", tmp_path / "two"
    config(single, tiny_model_dir)
    config(double, tiny_model_dir)
    common = [*COMMON, f"train.method={method}", f"train.fsdp={sharding == 'fsdp'}"]
    if method == "full":
        common.append("train.lr=0.003")
    one = subprocess.run([sys.executable, str(WORKER), str(single / "r.yaml"), *common, "train.grad_accum_steps=2"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
         str(double / "r.yaml"), *common, "train.grad_accum_steps=1"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = trained_weights(single, method), trained_weights(double, method)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    if method == "lora":
        assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)
    else:  # every weight moved (a gathered-but-stale shard would show up as an unchanged tensor)
        initial = load_file(tiny_model_dir / "model.safetensors")
        assert all(not torch.equal(initial[k], b[k]) for k in initial if k in b)
