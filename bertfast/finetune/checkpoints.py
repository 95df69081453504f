"""Training checkpoints that survive a kill at any moment.

Layout under OUTPUT/checkpoints/:
    step-00000120/          model.safetensors, training_state.pt (optimizer, scheduler, loss
                            scaler, RNG states of every rank), trainer_state.json (data position)
    best-00000100/          the best model so far, a complete model folder
    POINTER.json            {"latest": "step-00000120", "best": "best-00000100", ...}

Every folder is written under a temporary name and renamed when complete; POINTER.json is
replaced atomically last. A kill leaves at worst an unreferenced folder, which the next save
removes: the pointer always names complete folders."""
import os
import random
import shutil

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._files import atomic_write_json, fsync_dir, fsync_tree, read_json

FOLDER = "checkpoints"  # under the run's output folder
POINTER = "POINTER.json"


def checkpoints_dir(output):
    """OUTPUT/checkpoints: where a run keeps its checkpoints."""
    return os.path.join(output, FOLDER)


def has_checkpoint(output):
    """Whether the run in `output` has written its pointer: a checkpoint to resume from, or the
    record that it finished. A run without one left nothing worth keeping."""
    return os.path.exists(os.path.join(checkpoints_dir(output), POINTER))


def write_folder(parent, name, fill):
    """Create parent/name atomically: fill(tmp_path) writes the contents, then one rename."""
    final = os.path.join(parent, name)
    if os.path.exists(final):
        return final  # written before this resume: same step, same contents
    tmp = os.path.join(parent, f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    fill(tmp)
    fsync_tree(tmp)
    os.replace(tmp, final)
    fsync_dir(parent)
    return final


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_pointer(checkpoints_dir):
    path = os.path.join(checkpoints_dir, POINTER)
    if not os.path.exists(path):
        return None
    pointer = read_json(path, 'it names the checkpoint to resume from: write {"latest": "step-N", "best": null} '
                        f"naming a step-N folder of {checkpoints_dir}, or start the run again with --overwrite")
    for key in ("latest", "best"):
        name = pointer.get(key)
        if name is not None and (not isinstance(name, str) or not os.path.isdir(os.path.join(checkpoints_dir, name))):
            raise ValueError(f"{path} is corrupt: its {key!r} names no checkpoint folder ({name!r}); "
                             "start the run again with --overwrite")
    return pointer


def write_pointer(checkpoints_dir, pointer):
    atomic_write_json(os.path.join(checkpoints_dir, POINTER), pointer)
    keep = {pointer.get("latest"), pointer.get("best"), POINTER}
    for name in os.listdir(checkpoints_dir):
        if name not in keep and not name.startswith(POINTER):
            path = os.path.join(checkpoints_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def save_training_state(checkpoints_dir, step, model, optimizer, scheduler, scaler, rng_states, trainer_state):
    """Write step-N (rank 0 only); returns its folder name. rng_states: one per rank."""
    name = f"step-{step:08d}"

    def fill(tmp):
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(_untie(state), os.path.join(tmp, "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_states},
                   os.path.join(tmp, "training_state.pt"))
        atomic_write_json(os.path.join(tmp, "trainer_state.json"), trainer_state)

    write_folder(checkpoints_dir, name, fill)
    return name


def _untie(state):
    """safetensors refuses tensors that share memory (tied weights): give each its own copy."""
    seen, out = {}, {}
    for k, v in state.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if ptr in seen else v
        seen[ptr] = k
    return out


def load_training_state(checkpoints_dir, name, model, optimizer, scheduler, scaler, device):
    """Restore weights, optimizer, scheduler and scaler in place; returns (trainer_state, rng_states)."""
    folder = os.path.join(checkpoints_dir, name)
    weights = load_file(os.path.join(folder, "model.safetensors"), device=str(device))
    model.load_state_dict(weights, strict=True)
    # On the CPU: RNG states must stay CPU tensors; the optimizer moves its state to the weights.
    state = torch.load(os.path.join(folder, "training_state.pt"), map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    trainer_state = read_json(os.path.join(folder, "trainer_state.json"), "start the run again with --overwrite")
    return trainer_state, state["rng"]
