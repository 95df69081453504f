"""The cache of large CPU output blocks (csrc/common/output_cache.h): blocks freed by one call
serve the next, within the limit, and results do not depend on it."""
import os
import subprocess
import sys

import pytest
import torch

import bertfast
from bertfast.ops import add_layer_norm, softmax_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIG = (1024, 768)  # 3 MiB of float32: above the cache's 1 MiB threshold


def _inputs(rows, hidden, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in ((rows, hidden), (rows, hidden), (hidden,), (hidden,))]


def test_freed_outputs_serve_the_next_call():
    x, r, w, b = _inputs(*BIG, seed=0)
    add_layer_norm(x, r, w, b)  # its output block is freed at once, into the cache
    before = bertfast.cpu_cache_stats()
    assert before["cached_bytes"] >= x.numel() * 4
    out = add_layer_norm(x, r, w, b)
    after = bertfast.cpu_cache_stats()
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    assert after["cached_bytes"] <= after["limit_bytes"]
    # a recycled block holds the new result, not the old one
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x + r, (BIG[1],), w, b, 1e-12))


def test_emptying_the_cache_keeps_blocks_in_use():
    x, r, w, b = _inputs(*BIG, seed=1)
    kept = add_layer_norm(x, r, w, b)
    expected = kept.clone()
    add_layer_norm(x, r, w, b)
    bertfast.empty_cpu_cache()
    assert bertfast.cpu_cache_stats()["cached_bytes"] == 0
    torch.testing.assert_close(kept, expected, rtol=0, atol=0)
    kept.resize_(BIG[0] * 2, BIG[1])  # the storage grows through the same allocator
    kept[BIG[0]:] = 1.0
    torch.testing.assert_close(kept[:BIG[0]], expected, rtol=0, atol=0)


def test_cached_gradients_flow_through_autograd():
    logits = torch.randn(512, 1000, requires_grad=True)  # a 2 MB gradient
    labels = torch.randint(0, 1000, (512,))
    for _ in range(3):
        logits.grad = None
        softmax_cross_entropy(logits, labels).backward()
        ref = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels), logits)[0]
        torch.testing.assert_close(logits.grad, ref)


def _run(code, **env_vars):
    env = dict(os.environ, PYTHONPATH=ROOT, **env_vars)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


_SCRIPT = r"""
import torch, bertfast
from bertfast.ops import add_layer_norm
g = torch.Generator().manual_seed(0)
x, r = torch.randn(1024, 768, generator=g), torch.randn(1024, 768, generator=g)
w, b = torch.randn(768, generator=g), torch.randn(768, generator=g)
peak = 0
for rows in (1024, 512, 1024, 700, 1024, 300, 1024):
    out = add_layer_norm(x[:rows], r[:rows], w, b)
    peak = max(peak, bertfast.cpu_cache_stats()["cached_bytes"])
torch.save(out, OUT)
s = bertfast.cpu_cache_stats()
print(s["limit_bytes"], s["hits"], peak)
"""


def test_limit_env_var_bounds_the_cache_and_zero_turns_it_off(tmp_path):
    results = {}
    for mb in ("0", "3", "64"):
        path = tmp_path / f"out{mb}.pt"
        proc = _run(_SCRIPT.replace("OUT", repr(str(path))), BERTFAST_CPU_CACHE_MB=mb)
        assert proc.returncode == 0, proc.stderr[-2000:]
        limit, hits, peak = map(int, proc.stdout.split())
        assert limit == int(mb) << 20 and peak <= limit
        results[mb] = (hits, torch.load(path))
    assert results["0"][0] == 0 and results["64"][0] > 0
    torch.testing.assert_close(results["0"][1], results["64"][1], rtol=0, atol=0)


def test_bad_limit_env_var_is_a_clear_error():
    proc = _run(_SCRIPT.replace("OUT", "'/dev/null'"), BERTFAST_CPU_CACHE_MB="lots")
    assert proc.returncode != 0 and "BERTFAST_CPU_CACHE_MB" in proc.stderr


_FORK_SCRIPT = r"""
import os, threading, torch, bertfast
from bertfast.ops import add_layer_norm
g = torch.Generator().manual_seed(0)
x, r = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)  # 1 MiB: cached
w, b = torch.randn(512, generator=g), torch.randn(512, generator=g)
torch.set_num_threads(1)
stop = False
def churn():  # another thread taking and returning cached blocks all the time
    while not stop:
        add_layer_norm(x, r, w, b)
thread = threading.Thread(target=churn)
thread.start()
for _ in range(FORKS):
    pid = os.fork()
    if pid == 0:  # the child needs the cache (and its lock) at once
        out = add_layer_norm(x, r, w, b)
        os._exit(0 if bool(torch.isfinite(out).all()) else 1)
    assert os.waitpid(pid, 0)[1] == 0
stop = True
thread.join()
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_uses_the_cache():
    """Forks while another thread uses the cache: the fork handlers (which hold the cache's lock
    across fork() and release it in parent and child) must leave both with a working cache."""
    proc = subprocess.run([sys.executable, "-c", _FORK_SCRIPT.replace("FORKS", "300")], capture_output=True,
                          text=True, timeout=240, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
