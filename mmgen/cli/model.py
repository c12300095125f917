"""`mmgen init / generate / edit / export`: the unified checkpoint and sampling from it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmgen.cli.options import (
    add_attn_option,
    add_checkpoint_options,
    add_sampling_options,
    open_generator,
    sampling_settings,
)
from mmgen.files import atomic_directory, check_replaceable

OUTPUT_MARKER = "settings.json"  # what generate / edit write last: proves a folder is their earlier output


def add_parser(verbs) -> None:
    init = verbs.add_parser("init", help="extend an LLM's vocabulary with image tokens: write a unified checkpoint",
                            description="Add <|image_start|>, <|image_end|> and one token per visual code to a "
                            "local Hugging Face causal LM and save the unified checkpoint.")
    base = init.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="base LLM directory (Hugging Face format, safetensors)")
    base.add_argument("--tiny-llm", metavar="FAMILY",
                      help="build the demo-sized tiny LLM of this family (llama, qwen2, qwen3, mistral, gemma2, "
                      "gemma3, phi3) from config instead: no weights needed")
    init.add_argument("--tokenizer", required=True, help="visual tokenizer directory (mmgen or diffusers VQModel)")
    init.add_argument("--out", required=True, help="output directory for the unified checkpoint")
    init.add_argument("--init", default="mean", choices=["mean", "codebook", "random"],
                      help="initialisation of the new embedding rows (default mean)")
    init.add_argument("--prompt-format", default="plain", choices=["plain", "chat"],
                      help="wrap text in the tokenizer's chat template (instruct models) or not (default plain)")
    init.add_argument("--pad-to-multiple-of", type=int, help="pad the embedding table (e.g. 64 for tensor cores)")
    init.add_argument("--seed", type=int, default=0, help="seed of the row initialisation")
    init.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from --base")
    add_attn_option(init)
    init.set_defaults(handler=_run_init)

    generate = verbs.add_parser("generate", help="sample images from a unified checkpoint",
                                description="Text-to-image sampling with classifier-free guidance.")
    _add_model_arguments(generate)
    prompts = generate.add_argument_group("prompts (at least one)")
    prompts.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    prompts.add_argument("--prompts", help="a file of prompts: one per line (.txt) or {\"prompt\": ...} (.jsonl)")
    generate.add_argument("--negative-prompt", help="text for the unconditional branch of CFG")
    _add_sampling_arguments(generate)
    generate.set_defaults(handler=_run_generate)

    edit = verbs.add_parser("edit", help="edit an image with an instruction",
                            description="Instruction-based image editing: condition on the source image's codes.")
    _add_model_arguments(edit)
    edit.add_argument("--image", required=True, help="source image (resized and centre-cropped to the tokenizer)")
    edit.add_argument("--instruction", required=True, help="what to change")
    _add_sampling_arguments(edit)
    edit.set_defaults(handler=_run_edit)

    export = verbs.add_parser("export", help="merge a LoRA adapter into a clean unified checkpoint",
                              description="Write a unified checkpoint with the LoRA adapter merged into the weights.")
    export.add_argument("--model", required=True, help="unified checkpoint directory")
    export.add_argument("--adapter", help="peft adapter directory (default: the checkpoint's own adapter/)")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--dtype", choices=["stored", "fp32", "bf16", "fp16"], default="stored",
                        help="weight dtype of the export (default: as stored)")
    export.set_defaults(handler=_run_export)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="unified checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory for PNGs, grid.png and settings.json")
    add_checkpoint_options(parser)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = add_sampling_options(parser)
    group.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    group.add_argument("--seed", type=int, default=0, help="image i of the run uses seed + i (default 0)")
    group.add_argument("--image-size", type=int, help="expected image size; checked against the tokenizer")


def _run_init(args) -> int:
    import tempfile

    from mmgen.checkpoint import init_unified, read_meta
    from mmgen.errors import UserError
    from mmgen.tiny_lm import FAMILIES, save_demo_lm

    if args.tiny_llm and args.tiny_llm not in FAMILIES:
        raise UserError(f"unknown --tiny-llm family {args.tiny_llm!r}; choose one of {', '.join(FAMILIES)}")
    with tempfile.TemporaryDirectory() as scratch:
        base = args.base or save_demo_lm(Path(scratch) / "tiny-llm", args.tiny_llm, seed=args.seed)
        out = init_unified(base, args.tokenizer, args.out, init=args.init, prompt_format=args.prompt_format,
                           pad_to_multiple_of=args.pad_to_multiple_of, seed=args.seed,
                           trust_remote_code=args.trust_remote_code, attn_implementation=args.attn)
    meta = read_meta(out)
    tokens = meta["image_tokens"]
    print(f"unified checkpoint: {out} ({tokens['codebook_size']} code tokens from id {tokens['first_code_id']}, "
          f"{meta['tokens_per_image']} tokens per image, init {args.init})")
    return 0


def _run_generate(args) -> int:
    from mmgen.errors import UserError

    prompts = list(args.prompt) + (_read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise UserError("give at least one --prompt or a --prompts file")
    settings = sampling_settings(args, "num_images", "seed", "image_size") | {"negative_prompt": args.negative_prompt}
    check_replaceable(args.out, OUTPUT_MARKER)  # before sampling: a taken --out costs nothing
    generator, config = open_generator(args, settings)
    images = generator.generate(prompts, config, progress=True)
    _write_outputs(args.out, prompts, images, config, args.model, verb="generate",
                   precision=generator.precision.to_dict())
    return 0


def _run_edit(args) -> int:
    from mmgen.images import load_image

    source = load_image(args.image)  # a bad file fails here, before the model loads
    check_replaceable(args.out, OUTPUT_MARKER)
    generator, config = open_generator(args, sampling_settings(args, "num_images", "seed", "image_size"))
    images = generator.edit([source], [args.instruction], config, progress=True)
    _write_outputs(args.out, [args.instruction], images, config, args.model, verb="edit", source=args.image,
                   precision=generator.precision.to_dict())
    return 0


def _run_export(args) -> int:
    from mmgen.checkpoint import export_unified

    out = export_unified(args.model, args.out, adapter=args.adapter, dtype=args.dtype)
    print(f"exported: {out}")
    return 0


def _read_prompts(path: str) -> list[str]:
    from pathlib import Path

    from mmgen.errors import UserError
    from mmgen.files import read_jsonl

    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompts file not found: {file}")
    if file.suffix != ".jsonl":
        prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    else:
        prompts = []
        for number, record in read_jsonl(file):
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UserError(f"{file}:{number}: each line needs a string \"prompt\" key")
            prompts.append(record["prompt"])
    if not prompts:
        raise UserError(f"{file} holds no prompts")
    return prompts


def _write_outputs(out: str, prompts: list[str], images, config, model: str, verb: str, **extra) -> None:
    from pathlib import Path

    from mmgen.images import make_grid

    out_dir = Path(out)
    # A folder of an earlier run (it has settings.json) is replaced whole, so no image of that run stays beside a
    # settings.json that does not list it; any other non-empty folder is refused.
    with atomic_directory(out_dir, replace_marker=OUTPUT_MARKER) as staging:
        (staging / "images").mkdir()
        files = []
        for p, per_prompt in enumerate(images):
            for i, image in enumerate(per_prompt):
                name = f"images/{p:04d}_{i:02d}.png"
                image.save(staging / name)
                files.append({"prompt": prompts[p], "image": i, "seed": config.seed + p * config.num_images + i,
                              "file": name})
        make_grid([image for per_prompt in images for image in per_prompt], columns=config.num_images).save(
            staging / "grid.png")
        (staging / OUTPUT_MARKER).write_text(json.dumps({"verb": verb, "model": str(model), **extra,
                                                           "sampling": config.to_dict(), "images": files}, indent=2))
    print(f"wrote {len(files)} images, grid.png and settings.json to {out_dir}")
