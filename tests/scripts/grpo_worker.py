"""One GRPO step of the tiny setup, run under torchrun by tests/test_grpo.py.

Usage: torchrun --nproc_per_node N grpo_worker.py OUT_DIR
Writes OUT_DIR/grads-rank{R}.safetensors (the LoRA gradients after the update's all-reduce) and
OUT_DIR/log-rank{R}.json.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from grpo_setup import make_trainer  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    trainer = make_trainer(grad_clip=1e9)
    log = trainer.train_step()
    grads = {n: p.grad.detach().clone() for n, p in trainer.transformer.named_parameters()
             if "lora_" in n}
    save_file(grads, os.path.join(out, f"grads-rank{rank}.safetensors"))
    with open(os.path.join(out, f"log-rank{rank}.json"), "w") as f:
        json.dump(log, f)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
