"""GRPO steps of the tiny setup, plain or sharded with FSDP2, run by tests/test_grpo_scale.py.

Usage: [torchrun --nproc_per_node N] grpo_fsdp_worker.py OUT_DIR {plain|fsdp} STEPS [RESUME_DIR]
Trains STEPS steps (after resuming from RESUME_DIR when given), with an EMA and micro-batches of
1, checkpointing to OUT_DIR after every step; writes OUT_DIR/log-rank{R}.json (the steps' logs).
"""

import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from grpo_setup import make_trainer  # noqa: E402


def main() -> None:
    out, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    trainer = make_trainer(fsdp=mode == "fsdp", micro_batch_size=1, ema_decay=0.5,
                           gradient_checkpointing=True)
    if len(sys.argv) > 4:
        trainer.load_checkpoint(sys.argv[4])
    history = trainer.train(steps, out_dir=out, checkpoint_every=1, progress=False)
    with open(os.path.join(out, f"log-rank{rank}.json"), "w") as f:
        json.dump(history, f)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
