"""`r1lite train`: GRPO on TRL, with a run directory a person can read afterwards.

The trainer is TRL's own ``GRPOTrainer`` plus public callbacks, except on a CPU, where it is r1lite's
``CPUFastGRPOTrainer`` (turn that off with ``cpu_fast_path: false``). A run directory holds
``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (one JSON object per logged step, TRL's metric
keys), ``completions/`` (TRL's completion log: prompts, completions, rewards, gold answers per step),
``checkpoint-N/`` every ``save_steps`` and the final LoRA adapter in ``adapter/``. With several processes
(``accelerate launch``) only the main process writes these files.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from r1lite import callbacks
from r1lite.config import OutputArgs, RunConfig, SFTRunConfig, world_size
from r1lite.data import load_prepared
from r1lite.errors import ConfigError, DiskFull, Interrupted, ModelError
from r1lite.model_card import write_run_cards
from r1lite.models import attach_adapter, default_device, load_from_args, lora_config, resolve_dtype
from r1lite.rewards import build_reward_funcs

logger = logging.getLogger(__name__)

# What a run leaves behind (besides checkpoint-N/); config.yaml alone is rewritten by the next run anyway.
# runs/ holds TensorBoard's event files (report_to tensorboard).
RUN_FILES = ("metrics.jsonl", "completions", "adapter", "samples.jsonl", "runs")


def precision_flags(precision: str, device: str) -> dict[str, bool]:
    """The Trainer's mixed-precision flags for r1lite's `precision` on this device (train and sft alike)."""
    dtype = resolve_dtype(precision, device)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "use_cpu": device == "cpu"}


def adapt_to_device(grpo: dict[str, Any], precision: str, device: str) -> dict[str, Any]:
    """GRPOConfig keyword arguments for this device: precision flags, and GPU-only settings replaced on CPU."""
    grpo = {**grpo, **precision_flags(precision, device)}
    if device == "cpu":
        if grpo.get("use_vllm"):
            logger.warning("use_vllm needs a CUDA GPU here; generating with transformers instead")
            grpo["use_vllm"] = False
        if "8bit" in str(grpo.get("optim", "")):
            logger.warning("optim %s needs a CUDA GPU (bitsandbytes); using adamw_torch on CPU", grpo["optim"])
            grpo["optim"] = "adamw_torch"
    return grpo


def build_grpo_config(config: RunConfig, device: str | None = None) -> GRPOConfig:
    """GRPOConfig for this device. The settings the device decides (precision flags, GPU-only options replaced on a
    CPU) are written back into config.trl, so that the config.yaml a run saves shows what it ran with."""
    device = device or default_device()
    config.trl = adapt_to_device(config.trl, config.model.precision, device)
    return GRPOConfig(**config.trl)


def _sharding() -> str | None:
    """'zero3' or 'fsdp' when accelerate launched this run with sharded parameters."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "fsdp"
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "zero3"
    return None


# report_to name -> (modules, any one of which the integration needs; how to install one)
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'r1lite[track]'"),
    "trackio": (("trackio",), "pip install trackio"),
    "wandb": (("wandb",), "pip install wandb"),
}


def check_outlets(args) -> None:
    """Tracking backends (report_to) and hub publishing (push_to_hub) that cannot work on this machine, refused in
    one line before a model loads instead of at the trainer's first log or save."""
    for name in getattr(args, "report_to", None) or []:
        modules, install = TRACKERS.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(f"report_to {name} needs the {modules[0]} package: {install} (or drop it from report_to)")
        if name == "wandb" and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
            if not os.environ.get("WANDB_API_KEY") and not (Path.home() / ".netrc").is_file():
                raise ConfigError(
                    "report_to wandb: no W&B login on this machine; run `wandb login`, or set WANDB_MODE=offline to "
                    "log locally and `wandb sync` later"
                )
    if getattr(args, "push_to_hub", False):
        check_hub_reachable()


def check_hub_reachable() -> None:
    """push_to_hub needs the Hugging Face Hub and a login: ask the hub who we are (one request), now."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "push_to_hub: HF_HUB_OFFLINE is set, so nothing can be pushed; set push_to_hub false (the adapter is "
            "saved in output_dir either way) and publish it later with `hf upload`"
        )
    try:
        HfApi().whoami()
    except Exception as exc:  # noqa: BLE001 - no token, no network, a bad token: all mean "cannot push"
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        reason = re.split(r"(?<=[.!?])\s", first_line)[0].rstrip(".")[:200]
        raise ConfigError(
            f"push_to_hub: the Hugging Face Hub cannot be reached or no login is set ({reason}); run `hf auth login`, "
            "or set push_to_hub false (the adapter is saved in output_dir either way)"
        ) from exc


def preflight(args: GRPOConfig, config: RunConfig, device: str) -> None:
    """Refuse, in one line each, the combinations that would fail deep inside TRL, vLLM or bitsandbytes."""
    check_outlets(args)
    m, lora = config.model, config.lora
    four_bit = m.load_in_4bit and device == "cuda"
    if args.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ModelError("use_vllm: true needs vLLM on this machine: pip install 'r1lite[gpu]' (or set use_vllm false)")
    if "8bit" in str(args.optim) and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"optim {args.optim} needs bitsandbytes: pip install 'r1lite[gpu]' (or optim adamw_torch)")
    if four_bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("load_in_4bit needs bitsandbytes: pip install 'r1lite[gpu]' (or load_in_4bit false)")
    if m.load_in_4bit and not lora.use_lora:
        raise ConfigError(
            "load_in_4bit trains a LoRA adapter on frozen 4-bit weights: set use_lora true, or "
            "load_in_4bit false for full fine-tuning"
        )
    sharding = _sharding()
    if four_bit and sharding and not m.bnb_4bit_quant_storage:
        raise ConfigError(
            f"a 4-bit base with {sharding} needs bnb_4bit_quant_storage: bfloat16 to shard; or train "
            "with DDP or ZeRO-2 (recipes/accelerate/ddp.yaml, zero2.yaml)"
        )
    if four_bit and args.use_vllm and sharding:
        raise ConfigError(
            f"4-bit + vLLM + {sharding}: vLLM weight sync needs whole 4-bit layers; use DDP or ZeRO-2 "
            "(recipes/accelerate/zero2.yaml), or bf16 LoRA (recipes/qwen2.5-3b-gsm8k-bf16.yaml)"
        )
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if args.use_vllm and args.vllm_mode == "colocate" and device == "cuda" and local_processes > _gpu_count():
        raise ConfigError(
            f"vllm_mode colocate starts one vLLM per process: {local_processes} processes on "
            f"{_gpu_count()} GPU(s) would share a card. Launch one process per GPU, or use "
            "vllm_mode server (recipes/qwen2.5-3b-gsm8k-multi-gpu.yaml)"
        )
    if config.run.eval_every and sharding:
        raise ConfigError(
            f"eval_every runs on the main process alone, which {sharding} cannot (every forward needs "
            "all processes): set eval_every 0 and run r1lite eval on the saved adapter"
        )


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def start_run(config: RunConfig | SFTRunConfig, args) -> str | None:
    """Prepare the run directory on the main process first (the others wait), save the resolved recipe there, and
    return the checkpoint to resume from (None for a fresh run)."""
    is_main = args.process_index == 0
    with args.main_process_first(local=False, desc="preparing the run directory"):
        checkpoint = prepare_output_dir(config.output_dir, config.output, is_main)
        if is_main:
            config.save(config.output_dir / "config.yaml")
    return checkpoint


def prepare_output_dir(out: Path, output: OutputArgs, is_main: bool) -> str | None:
    """The checkpoint to resume from (None for a fresh run), after making sure two runs never mix in `out`."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a directory")
    _check_writable(out)
    if output.resume:
        return _checkpoint_to_resume(out)
    if not is_main:  # the main process has judged and prepared the directory already (train: main_process_first)
        return None
    earlier = [p.name for p in _run_files(out)]
    if earlier and not output.overwrite:
        raise ConfigError(
            f"output_dir {out} already holds a run ({', '.join(sorted(earlier)[:4])}): pass "
            "--resume true to continue it, --overwrite true to replace it, or another --output_dir"
        )
    if earlier:
        logger.warning("overwrite: removing the earlier run's files from %s", out)
        for path in _run_files(out):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def _check_writable(out: Path) -> None:
    """Fail now, not at the first checkpoint an hour in, when the run directory cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".r1lite-write-test-{os.getpid()}"  # one per process: ranks probe at the same time
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"output_dir {out} cannot be written ({exc.strerror or exc}); pass another --output_dir"
        ) from exc


def _run_files(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.name in RUN_FILES or p.name.startswith("checkpoint-")]


def complete_checkpoints(out: Path) -> tuple[list[Path], list[Path]]:
    """(checkpoints the Trainer finished writing, oldest first; newer ones it did not finish). Finished ones carry
    callbacks.COMPLETE_MARKER; one without it was cut short by a kill, a full disk or a crash while saving."""
    folders = (
        sorted(
            (p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
            key=lambda p: step_of(str(p)),
        )
        if out.is_dir()
        else []
    )
    complete = [p for p in folders if (p / callbacks.COMPLETE_MARKER).is_file()]
    newest = step_of(str(complete[-1])) if complete else -1
    return complete, [p for p in folders if p not in complete and step_of(str(p)) > newest]


def _checkpoint_to_resume(out: Path) -> str | None:
    """The newest complete checkpoint; newer, unfinished ones are named and skipped."""
    complete, unfinished = complete_checkpoints(out)
    if unfinished:
        logger.warning(
            "resume: skipping %s, written only in part (the run stopped while saving)",
            ", ".join(p.name for p in unfinished),
        )
    if not complete:
        if unfinished:
            raise ConfigError(
                f"resume: no complete checkpoint in {out} ({', '.join(p.name for p in unfinished)} "
                "not marked complete: written only in part, or by r1lite before 0.2); start again "
                "with --overwrite true"
            )
        logger.warning("resume: no checkpoint-N directory in %s, starting from scratch", out)
        return None
    logger.info("Resuming from %s", complete[-1])
    return str(complete[-1])


def step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


def build_trainer(config: RunConfig, args: GRPOConfig, device: str, model, tokenizer, dataset) -> GRPOTrainer:
    """TRL's GRPOTrainer, or r1lite's CPU trainer on a CPU with the fast path on."""
    lora = config.lora
    peft_config = None
    if lora.init_adapter:
        model = attach_adapter(model, lora.init_adapter, trainable=True)
    elif lora.use_lora:
        peft_config = lora_config(lora.lora_r, lora.lora_alpha, lora.lora_dropout, lora.lora_target_modules)
    r = config.rewards
    reward_funcs = build_reward_funcs(r.reward_set, r.rewards, r.on_reward_error, r.reward_timeout)
    kwargs = dict(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if device == "cpu" and config.run.cpu_fast_path:
        from r1lite.cpu_fast_path import CPUFastGRPOTrainer

        return CPUFastGRPOTrainer(**kwargs)
    if not args.use_vllm:
        trainer = GRPOTrainer(**kwargs)
    else:
        from r1lite.trl_compat import dense_vllm_engine, push_dense_weights_to_vllm

        with dense_vllm_engine():
            trainer = GRPOTrainer(**kwargs)
        if push_dense_weights_to_vllm(trainer):
            logger.info("vLLM weight sync: dense base + LoRA delta, the training model left unmerged")
    trainer.add_callback(callbacks.StepTime())
    return trainer


def train(config: RunConfig) -> Path:
    """Run GRPO as configured; return the directory of the saved adapter."""
    out = config.output_dir
    device = default_device()
    args = build_grpo_config(config, device)  # sets up the process group under accelerate launch
    preflight(args, config, device)
    checkpoint = start_run(config, args)
    logger.info("training on %s with %d process(es)", device, world_size())

    model, tokenizer, dataset = load_model_and_rows(config, args, device)
    trainer = build_trainer(config, args, device, model, tokenizer, dataset)
    reward_names = [f.__name__ for f in trainer.reward_funcs]
    callbacks.install(trainer, out, reward_names, config.run.zero_std_patience, resumed_step=step_of(checkpoint))
    if config.run.eval_every:
        trainer.add_callback(_periodic_eval(config, tokenizer, trainer, args.seed))
    run_until_done_or_signal(trainer, checkpoint, out)
    return finish_run(trainer, tokenizer, out)


def finish_run(trainer, tokenizer, out: Path) -> Path:
    """Save the final adapter, its tokenizer and the model cards in out/adapter; push when push_to_hub says so."""
    adapter_dir = out / "adapter"
    trainer.save_model(str(adapter_dir))  # the main process writes, the others take part in any gather
    if trainer.args.process_index == 0:
        tokenizer.save_pretrained(adapter_dir)
        write_run_cards(out, adapter_dir)
        logger.info("Saved adapter to %s", adapter_dir)
    if trainer.args.push_to_hub:
        publish(trainer, out)
    return adapter_dir


def publish(trainer, out: Path) -> None:
    """push_to_hub: transformers uploads the run directory (the adapter at the repository's root, checkpoints left
    out); then r1lite's model card goes up over the draft TRL writes while pushing, which names no base model."""
    trainer.push_to_hub(commit_message="r1lite: trained adapter")  # every process: it saves the model first
    if not trainer.is_world_process_zero():
        return
    from huggingface_hub import HfApi

    write_run_cards(out, out / "adapter")
    HfApi().upload_file(
        path_or_fileobj=str(out / "README.md"),
        path_in_repo="README.md",
        repo_id=trainer.hub_model_id,
        token=trainer.args.hub_token,
        commit_message="r1lite: model card",
    )
    logger.info("Pushed to https://huggingface.co/%s", trainer.hub_model_id)


def load_model_and_rows(config: RunConfig | SFTRunConfig, args, device: str):
    """The model, its tokenizer and the prepared training rows, as both training commands load them."""
    d = config.data
    model, tokenizer = load_from_args(config.model, device, bool(config.trl.get("trust_remote_code")))
    rows = load_prepared(d.dataset, d.dataset_train_split, d.prompt(), d.few_shot, d.max_train_samples, tokenizer,
                         d.max_prompt_length, args.seed)  # fmt: skip
    return model, tokenizer, rows


def run_until_done_or_signal(trainer, checkpoint: str | None, out: Path) -> None:
    """trainer.train, stopped cleanly by SIGINT/SIGTERM: the step in flight finishes, a checkpoint is saved, and
    Interrupted says where (the CLI exits with 128 + the signal's number)."""
    stop = callbacks.StopOnSignal().install()
    trainer.add_callback(stop)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        complete, _ = complete_checkpoints(out)
        kept = complete[-1] if complete else None
        raise DiskFull(
            f"the disk holding {out} is full ({exc}); the half-written checkpoint is not marked complete "
            f"and resume skips it. {f'{kept} is intact: free space, then --resume true' if kept else ''}".strip()
        ) from exc
    finally:
        stop.uninstall()
    if stop.signal is not None:
        import signal

        saved = out / f"checkpoint-{trainer.state.global_step}"
        raise Interrupted(
            f"stopped by {signal.Signals(stop.signal).name} after step {trainer.state.global_step}; "
            f"checkpoint saved to {saved}; continue with --resume true",
            stop.signal,
        )


def _periodic_eval(config: RunConfig, tokenizer, trainer, seed: int) -> callbacks.PeriodicEval:
    """Held-out evaluation during training, prompted exactly as the training rows."""
    d, r = config.data, config.run
    held_out = load_prepared(
        d.dataset,
        d.dataset_test_split,
        d.prompt(),
        d.few_shot,
        d.max_eval_samples or 50,
        tokenizer,
        d.max_prompt_length,
        seed,
        sample=True,
    )
    return callbacks.PeriodicEval(
        held_out, tokenizer, r.eval_every, trainer=trainer, max_completion_length=r.eval_max_completion_length
    )
