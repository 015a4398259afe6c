"""`ctxext train`: long-context continual pretraining / fine-tuning with a scaled RoPE, one CPU to many GPUs.

Packs --data into rows of --seq-len tokens (documents kept apart), trains with AdamW (warm-up, then cosine or
linear decay), gradient checkpointing and a chunked loss, evaluates passkey (and ppl on --eval-data) at
--seq-len before, during and after training, checkpoints for --resume, and exports DIR/final as ctxext export
does (so `ctxext eval --model DIR/final` works). Before loading weights it prints the peak-memory estimate and
refuses a run that cannot fit. The same command runs under `accelerate launch` (DDP, FSDP, DeepSpeed ZeRO-3,
configs in configs/accelerate/; see docs/training.md).

examples:
  ctxext train --model tiny-rope --scaling yarn:factor=4 --data ../shared/data/books/pg1342.txt --seq-len 1024 --steps 200 \\
      --lr 1e-3 --batch-tokens 4096 --eval-data ../shared/data/books/pg84.txt --out runs/tiny-yarn
  ctxext train --model smollm2-135m --scaling abf:base=925387 --data ../shared/data/books/pg1342.txt --seq-len 32768 --steps 400 \\
      --lora --mixed-window --eval-every 100 --out runs/smol-32k
  ctxext train --model smollm2-135m --scaling yarn:factor=2 --instruct qa.jsonl --seq-len 2048 --steps 40 \\
      --lora --no-eval --out runs/smol-qa
  accelerate launch --config_file configs/accelerate/fsdp.yaml -m ctxext.cli train ... (same options)
"""

from __future__ import annotations

import argparse

from . import check_dependent, out_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.config import DEFAULT_LORA_LR, DEFAULT_LR, DEFAULT_WARMUP

    p.add_argument("--model", required=True, help="HF directory, .gguf file, or built-in name (smollm2-135m, tiny-rope, …)")
    p.add_argument("--scaling", required=True, metavar="SPEC",
                   help="name:key=value,… or a ctxext JSON file, e.g. yarn:factor=4, linear:factor=4, abf:base=500000")
    p.add_argument("--data", action="append", metavar="PATH",
                   help="text file, folder or .jsonl of long documents; repeat for several (or --instruct)")
    p.add_argument("--instruct", action="append", metavar="FILE.jsonl",
                   help="instruction tuning on long-document QA JSONL (ctxext synth-qa output or any layout eval "
                        "--task longqa reads) instead of --data: prompt = whole context + question, target = the "
                        "first answer; short examples packed into --seq-len rows, longer ones are an error "
                        "(never truncated); see ctxext.train.instruct")
    p.add_argument("--answer-loss-only", action="store_true",
                   help="with --instruct: loss on the answer tokens only (default: on the long prompt too, the "
                        "LLaMA 2 Long finding)")
    p.add_argument("--seq-len", type=int, required=True, help="training sequence length in tokens (the target window)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--out", required=True, type=out_folder, help="folder for checkpoints, results.json, summary.md, plots and final/")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default {DEFAULT_LR:g}, with --lora {DEFAULT_LORA_LR:g}: PI / YaRN)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per optimizer step over all processes, a multiple of --seq-len (default: one "
                        "sequence per process)")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per forward pass (default 1)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"linear warm-up steps (default {DEFAULT_WARMUP})")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "linear", "constant"),
                   help="decay after warm-up towards --min-lr-ratio × lr, reached one step after the last "
                        "(as Hugging Face's schedules; default cosine)")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay on matrices (default 0)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1.0)")
    p.add_argument("--lora", action="store_true",
                   help="LoRA adapters (peft) + trainable embeddings and norms (LongLoRA); merged on export")
    p.add_argument("--lora-rank", type=int, default=None, help="with --lora: LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=None, help="with --lora: LoRA alpha (default 16)")
    p.add_argument("--lora-targets", default=None,
                   help="with --lora: comma-separated module names to adapt (default q_proj,k_proj,v_proj,o_proj)")
    p.add_argument("--mixed-window", action="store_true",
                   help="LongRoPE2 mixed context window: some steps at the original window with the original RoPE, "
                        "the rest at --seq-len with the scaled one; exported as a longrope config")
    p.add_argument("--short-fraction", type=float, default=None,
                   help="with --mixed-window: share of steps at the original window (default 0.5)")
    p.add_argument("--no-grad-checkpointing", action="store_true",
                   help="keep every layer's activations (faster, much more memory)")
    p.add_argument("--loss-chunk", type=int, default=1024, help="positions per LM-head/cross-entropy chunk (default 1024)")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "flash_attention_2", "eager"),
                   help="attention kernel (default sdpa; flash_attention_2 on GPU needs the flash-attn package)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every K steps (default: before and after only)")
    p.add_argument("--eval-data", action="append", metavar="PATH",
                   help="held-out long documents for perplexity at --seq-len (passkey needs none)")
    p.add_argument("--eval-docs", type=int, default=2, help="documents for the perplexity evaluation (default 2)")
    p.add_argument("--passkey-trials", type=int, default=20, help="passkey trials per depth (default 20)")
    p.add_argument("--no-eval", action="store_true", help="no evaluation")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every K steps (default 100; also on Ctrl-C)")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint (weights, optimizer, schedule, data position, RNG); "
                        "starts from step 0 when there is none")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, LoRA init and evaluation (default 0)")
    p.add_argument("--no-memory-check", action="store_true", help="start even when the memory estimate does not fit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# options that act only with another flag: (dest, the dest it needs, its flag, the needed flag)
DEPENDENT = (("answer_loss_only", "instruct", "--answer-loss-only", "--instruct"),
             ("short_fraction", "mixed_window", "--short-fraction", "--mixed-window"),
             ("lora_rank", "lora", "--lora-rank", "--lora"), ("lora_alpha", "lora", "--lora-alpha", "--lora"),
             ("lora_targets", "lora", "--lora-targets", "--lora"))


def config_from_args(args: argparse.Namespace):
    from ..train.config import TrainConfig

    check_dependent(args, DEPENDENT)
    given = {k: v for k, v in (("lora_rank", args.lora_rank), ("lora_alpha", args.lora_alpha),
                                ("short_fraction", args.short_fraction)) if v is not None}
    if args.lora_targets is not None:
        given["lora_targets"] = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return TrainConfig(**given,
        model=args.model, scaling=args.scaling, data=tuple(args.data or ()), seq_len=args.seq_len, steps=args.steps,
        out=args.out, lr=args.lr, batch_tokens=args.batch_tokens, micro_batch=args.micro_batch, warmup=args.warmup,
        schedule=args.schedule, min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, lora=args.lora, mixed_window=args.mixed_window,
        grad_checkpointing=not args.no_grad_checkpointing, loss_chunk=args.loss_chunk, attn=args.attn,
        evaluate=not args.no_eval, eval_every=args.eval_every, eval_data=tuple(args.eval_data or ()),
        eval_docs=args.eval_docs, passkey_trials=args.passkey_trials, save_every=args.save_every,
        resume=args.resume, seed=args.seed, instruct=tuple(args.instruct or ()),
        prompt_loss=not args.answer_loss_only, check_memory=not args.no_memory_check,
        command_line=getattr(args, "command_line", ""))


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..train import train

    res = train(config_from_args(args), progress=not args.no_progress)
    if res.get("final") and PartialState().is_main_process:
        print(f"final model: {res['final']}  (ctxext eval --model {res['final']} …)")
    return 0 if res.get("export_verification", {}).get("passed", True) else 1
