"""One process of a DDP run of an optimized transformers model (launched by test_dropin_ddp.py
under torchrun, gloo on the CPU): the model of `ddp_case.build()` through bertfast.optimize, wrapped
in DistributedDataParallel, trained `ddp_case.STEPS` AdamW steps, each process on its half of each
batch. Rank 0 writes the trained weights to argv[1]; every rank checks that its weights equal rank 0's.
With `trainer` (or `trainer-original`: the model not optimized) transformers' Trainer runs the
same steps instead and saves its folder to argv[1].

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py OUT [trainer|trainer-original]
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddp_case  # noqa: E402

import bertfast  # noqa: E402


def main():
    out, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "loop")
    torch.set_num_threads(1)
    if mode in ("trainer", "trainer-original"):  # Trainer sets up the process group itself
        model = ddp_case.build()
        ddp_case.train_with_trainer(bertfast.optimize(model) if mode == "trainer" else model, out)
        # Trainer leaves its gloo group up; a process exiting with it alive can abort in teardown
        dist.barrier()
        dist.destroy_process_group()
        return
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = bertfast.optimize(ddp_case.build())
    assert bertfast.dropin.is_optimized(model.roberta), "optimize() returned the model unchanged"
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp_case.train(ddp, model.parameters(), lambda batch: ddp_case.shard(batch, rank, world))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for name, value in state.items():  # DDP keeps every replica equal: check it
        reference = value.clone()
        dist.broadcast(reference, 0)
        assert torch.equal(reference, value), f"rank {rank}: {name} differs from rank 0's"
    if rank == 0:
        from safetensors.torch import save_file
        save_file(state, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
