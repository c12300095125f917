"""Options shared by every verb that samples from a unified checkpoint (generate, edit, eval)."""

from __future__ import annotations

import argparse

# The SamplingConfig fields these options set; None means "not given": the checkpoint's mmgen.json decides.
SAMPLING_OPTIONS = ("cfg_scale", "temperature", "top_k", "top_p", "batch_size")


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpoint")
    group.add_argument("--adapter", metavar="DIR",
                       help="peft LoRA adapter to apply (default: the checkpoint's own adapter/)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    group.add_argument("--dtype", choices=["auto", "stored", "fp32", "bf16", "fp16"], default="auto",
                       help="model dtype; auto (default): bf16 on hardware with native bf16, else fp32; "
                            "stored: the checkpoint's own")
    add_attn_option(group)
    group.add_argument("--decoder", choices=["tokenizer", "diffusion"], default="tokenizer",
                       help="render codes with the visual tokenizer's decoder (default) or the checkpoint's "
                            "diffusion decoder head (decoder/)")


def add_attn_option(parser) -> None:
    parser.add_argument("--attn", choices=["auto", "sdpa", "eager", "flash_attention_2"], default="auto",
                        help="attention kernel; auto (default): flash-attn on CUDA when installed, else sdpa where "
                             "the model family has it, else eager")


def add_sampling_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("sampling (defaults from the checkpoint's mmgen.json)")
    group.add_argument("--cfg", type=float, dest="cfg_scale", metavar="SCALE",
                       help="classifier-free guidance scale (1 = off)")
    group.add_argument("--temperature", type=float, metavar="T", help="0 = greedy")
    group.add_argument("--top-k", type=int, metavar="K", help="keep the k most likely codes (0 = off)")
    group.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass in (0, 1]")
    group.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass (default 16)")
    return group


def sampling_settings(args: argparse.Namespace, *extra: str) -> dict:
    """The sampling options of `args` (plus the `extra` attribute names) as SamplingConfig keyword arguments."""
    return {name: getattr(args, name) for name in SAMPLING_OPTIONS + extra}


def open_generator(args: argparse.Namespace, settings: dict):
    """Load `args.model` for sampling with `settings`; invalid settings fail before the checkpoint loads."""
    from mmgen.sampling import load_generator

    generator, config = load_generator(args.model, settings, device=args.device, dtype=args.dtype,
                                       adapter=args.adapter, decoder=args.decoder, attn_implementation=args.attn)
    print(f"sampling: {generator.precision.line()}", flush=True)
    return generator, config
