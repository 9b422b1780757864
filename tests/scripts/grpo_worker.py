"""GRPO steps of the tiny setup, run under torchrun (or alone) by tests/test_grpo.py and
tests/test_grpo_scale.py.

Usage: [torchrun --nproc_per_node N] grpo_worker.py OUT_DIR
    one step; writes OUT_DIR/grads-rank{R}.safetensors (the LoRA gradients after the update's
    all-reduce) and OUT_DIR/log-rank{R}.json.
Usage: [torchrun --nproc_per_node N] grpo_worker.py OUT_DIR {plain|fsdp} STEPS [RESUME_DIR]
    STEPS steps (after resuming from RESUME_DIR when given), sharded with FSDP2 or not, with an
    EMA, micro-batches of 1 and activation checkpointing, checkpointing to OUT_DIR after every
    step; writes OUT_DIR/log-rank{R}.json (the steps' logs).
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from grpo_setup import make_trainer  # noqa: E402


def run(out: str, rank: int):
    if len(sys.argv) == 2:
        trainer = make_trainer(grad_clip=1e9)
        log = trainer.train_step()
        grads = {n: p.grad.detach().clone() for n, p in trainer.transformer.named_parameters()
                 if "lora_" in n}
        save_file(grads, os.path.join(out, f"grads-rank{rank}.safetensors"))
        return log
    mode, steps = sys.argv[2], int(sys.argv[3])
    trainer = make_trainer(fsdp=mode == "fsdp", micro_batch_size=1, ema_decay=0.5,
                           gradient_checkpointing=True)
    if mode == "fsdp":  # the adapter's own shards, which a resume and the EMA write into
        own = trainer.lora_state_dict()
        assert all(hasattr(v, "device_mesh") for v in own.values()), "not the sharded params"
        assert sorted(v.to_local().data_ptr() for v in own.values()) == \
            sorted(p.to_local().data_ptr() for p in trainer.params), "copies, not the params"
    if len(sys.argv) > 4:
        trainer.load_checkpoint(sys.argv[4])
    return trainer.train(steps, out_dir=out, checkpoint_every=1, progress=False)


def main() -> None:
    out = sys.argv[1]
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    log = run(out, rank)
    with open(os.path.join(out, f"log-rank{rank}.json"), "w") as f:
        json.dump(log, f)
    if dist.is_initialized():
        dist.barrier()  # leave together: gloo aborts a process whose peer leaves under it
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
    # Everything is written and closed, and the process group left. CI's CUDA build of torch
    # (run on a machine without a GPU) twice aborted a gloo rank with "terminate called without
    # an active exception" in an FSDP run, the barrier before leaving notwithstanding; skip the
    # interpreter's teardown, where a C++ thread can still be joinable.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
