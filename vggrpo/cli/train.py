"""``vggrpo train``: GRPO from a TOML or YAML config, with a model from a local diffusers folder
(``torchrun --nproc_per_node N -m vggrpo train`` for FSDP2 on N GPUs)."""

from __future__ import annotations

import dataclasses

import torch

from .options import (
    UsageError,
    add_backbone_option,
    check_lgm_vae,
    load_embeds,
    load_lgm,
    load_transformer,
    output_folder,
    read_config,
)


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``."""
    g = sub.add_parser("train", help="GRPO from a TOML/YAML config")
    g.add_argument("--config", required=True, help="TOML or YAML: model, lgm, backbone, "
                   "prompt_embeds, out, dtype, checkpoint_every, [grpo] (GRPOConfig fields), "
                   "[reward]")
    add_backbone_option(g, "; overrides the config's backbone")
    g.add_argument("--out", help="output folder (overrides the config's)")
    g.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    g.set_defaults(fn=run)


def _init_distributed() -> torch.device:
    """Under torchrun (RANK/WORLD_SIZE set): join the process group (NCCL on GPUs, gloo on CPUs)
    and pick this rank's GPU. Returns the device to train on."""
    import os

    cuda = torch.cuda.is_available()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def run(args) -> int:
    from ..grpo import GRPOConfig, GRPOTrainer, latest_checkpoint
    from ..latent_reward import LatentGeometryReward

    cfg = read_config(args.config)
    known = {"model", "lgm", "backbone", "prompt_embeds", "out", "dtype", "checkpoint_every",
             "keep_checkpoints", "grpo", "reward"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UsageError(f"config {args.config}: unknown keys {unknown}; expected {sorted(known)}")
    text, table = (str, "a string"), (dict, "a table")
    kinds = {"model": text, "lgm": text, "backbone": text, "prompt_embeds": text, "out": text,
             "dtype": text,
             "checkpoint_every": (int, "an int >= 0 (0: at the end only)"),
             "keep_checkpoints": (int, "a positive int (the newest checkpoints kept)"),
             "grpo": table, "reward": table}
    lowest = {"checkpoint_every": 0, "keep_checkpoints": 1}
    for key, (kind, what) in kinds.items():
        value = cfg.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (kind is int and value < lowest[key])):
            raise UsageError(f"config {args.config}: {key} must be {what}, got {value!r}")
    # A misspelt reward setting would otherwise be ignored and the default used.
    reward_known = {"weights", "topk", "flow_threshold", "coverage"}
    unknown = sorted(set(cfg.get("reward", {})) - reward_known)
    if unknown:
        raise UsageError(f"config {args.config}: unknown keys {unknown} in [reward]; expected "
                         f"{sorted(reward_known)}")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}.get(cfg.get("dtype", "float32"))
    if dtype is None:
        raise UsageError(f"config dtype must be float32, bfloat16 or float16, got "
                         f"{cfg.get('dtype')!r}")
    out = output_folder(args.out or cfg.get("out", "runs/grpo"))
    resume_from = latest_checkpoint(out)
    if resume_from is not None and not args.resume:
        # Training afresh here would mix two runs' checkpoints, logs and history.
        raise UsageError(f"--out {out} holds a run ({resume_from.name}); pass --resume to "
                         f"continue it, or choose another folder")
    # The settings, then the small LGM, then the video model, which may take minutes to load:
    # a bad [grpo] or [reward] value must not wait for it.
    grpo = dict(cfg.get("grpo", {}))
    # The trainer weighs the rewards with GRPOConfig.reward_weights; [reward] weights used to be
    # checked and then ignored here. They now stand for reward_weights when that is not given.
    weights = cfg.get("reward", {}).get("weights")
    if weights is not None and grpo.get("reward_weights") not in (None, weights):
        raise UsageError(f"config {args.config}: [reward] weights {weights} and [grpo] "
                         f"reward_weights {grpo['reward_weights']} differ; GRPO uses one: give "
                         f"reward_weights only")
    try:
        config = GRPOConfig(**grpo)
    except TypeError as err:
        raise UsageError(f"config [grpo]: {err}") from None
    device = _init_distributed()
    lgm = load_lgm(cfg.get("lgm", "default"), args.backbone or cfg.get("backbone"))
    # [reward]'s keys were checked above; the reward's own defaults fill what is not given.
    reward = LatentGeometryReward(lgm.to(device), **cfg.get("reward", {}))
    if weights is not None and config.reward_weights is None:
        config = dataclasses.replace(config, reward_weights=dict(reward.weights))
    check_lgm_vae(lgm, cfg.get("model", "tiny"))
    transformer = load_transformer(cfg.get("model", "tiny"), dtype).to(device)
    embeds, negative = load_embeds(cfg.get("prompt_embeds"), transformer)
    reward.check_latent_channels(int(transformer.config.in_channels))
    trainer = GRPOTrainer(transformer, reward, embeds, config, negative_prompt_embeds=negative)
    if resume_from is not None:
        trainer.load_checkpoint(out)
    history = trainer.train(out_dir=out, checkpoint_every=int(cfg.get("checkpoint_every", 50)),
                            keep_checkpoints=int(cfg.get("keep_checkpoints", 2)))
    if trainer.rank == 0:
        print(f"trained {len(history)} steps (the run has {len(trainer.history)}); LoRA in {out}")
    _leave_distributed()
    return 0


def _leave_distributed() -> None:
    """After a run that ended well on every rank: leave the process group together, so no rank
    exits while a peer still talks to it (gloo aborts such a process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
