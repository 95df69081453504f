"""Peak memory of one implementation's step, with the same definition on CPU and CUDA:

    peak = bytes this implementation holds before the step (parameters and buffers; for training
           also the AdamW state) + the most memory the step adds on top of that (activations,
           gradients, workspaces; gradients are released before the step so that they count here).

Other implementations living in the same process and the input batch are not counted.
CUDA: the added part is torch.cuda.max_memory_allocated() during the step minus
torch.cuda.memory_allocated() before it (exact, allocator-level).
CPU: the added part is the process's resident set size (/proc/self/statm) sampled every 0.2 ms
by a thread during the step, minus the RSS before it, after gc and glibc malloc_trim so that
memory freed earlier is returned to the OS first. An approximation: allocations shorter than the
sampling interval can be missed, and allocator fragmentation can add a little.
"""
import ctypes
import gc
import os
import threading
import time

import torch


def _tensor_bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def state_bytes(module, optimizer, training):
    tensors = list(module.parameters()) + list(module.buffers())
    if training:
        tensors += [p.grad for p in module.parameters()]
        tensors += [v for state in optimizer.state.values() for v in state.values()]
    return _tensor_bytes(tensors)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssSampler(threading.Thread):
    def __init__(self, interval=2e-4):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, _rss_bytes(), threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _rss_bytes())


def cpu_rss_available():
    return os.path.exists("/proc/self/statm")


def added_bytes(fn, device):
    """The most memory running fn() once adds on top of what is allocated before it (bytes, see
    the module docstring); None where it cannot be measured."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if not cpu_rss_available():
        return None
    gc.collect()
    _malloc_trim()
    before = _rss_bytes()
    sampler = _RssSampler()
    sampler.start()
    try:
        fn()
    finally:
        sampler.stop()
    return max(0, sampler.peak - before)


def peak_bytes(fn, module, optimizer, training, device):
    """Peak memory (bytes, see the module docstring) of running fn() once; None if unmeasurable."""
    optimizer.zero_grad(set_to_none=True)
    own = state_bytes(module, optimizer, training)
    added = added_bytes(fn, device)
    return None if added is None else own + added
