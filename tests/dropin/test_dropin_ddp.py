"""An optimized model under DistributedDataParallel, launched by torchrun (2 CPU processes, gloo):
the same weights as one process training the unoptimized model on the whole batches, and under
transformers' Trainer the same weights as the unoptimized model under the same Trainer run."""
import os
import subprocess
import sys

import pytest
import torch

from bert_testing import assert_close

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
import ddp_case  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# The key bias shifts every score of a query by the same amount, which softmax ignores: its exact
# gradient is zero, and AdamW's normalised update of rounding noise is +-lr of either sign.
NOISE_ONLY = "attention.self.key.bias"
ROOT = os.path.dirname(os.path.dirname(HERE))


def torchrun(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(HERE, "ddp_worker.py"), *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ddp_loop_matches_one_process_of_the_original(tmp_path):
    from safetensors.torch import load_file
    torchrun(tmp_path / "ddp.safetensors")
    reference = ddp_case.build()
    ddp_case.train(reference, reference.parameters())
    trained = load_file(str(tmp_path / "ddp.safetensors"))
    expected = reference.state_dict()
    assert trained.keys() == expected.keys()
    moved = 0
    for name, value in expected.items():
        if name.endswith(NOISE_ONLY):
            continue
        assert_close(trained[name], value, f"{name} after {ddp_case.STEPS} DDP steps", rtol=1e-4, atol=1e-5)
        moved += not torch.equal(value, ddp_case.build().state_dict()[name])
    assert moved > len(expected) // 2  # the steps trained (the comparison is not of untouched weights)


def test_trainer_under_torchrun_matches_the_original(tmp_path):
    from safetensors.torch import load_file
    torchrun(tmp_path / "fast", "trainer")
    torchrun(tmp_path / "original", "trainer-original")
    fast, original = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("fast", "original"))
    assert fast.keys() == original.keys()
    for name in original:
        if name.endswith(NOISE_ONLY):
            continue
        assert_close(fast[name], original[name], f"{name} after the Trainer's DDP steps", rtol=1e-4, atol=1e-5)
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "fast")
    assert type(reloaded).__name__ == "RobertaForSequenceClassification"
