"""Does r1lite's CPU path learn what the recipe learns? Same batch, both paths, compare what drives learning.

    python benchmarks/learning_check.py            # ~2 min on 2 cores
    python benchmarks/learning_check.py --output benchmarks/results/learning_check.json

One rollout (one GSM8K prompt, 8 completions of up to 200 tokens) is sampled by the recipe's path (fp32,
adapter unmerged) and scored once. Then, on exactly those tokens and advantages, with the same adapter
weights (lora_B drawn at random, as after some training, so that both LoRA matrices get gradients):

- per-token log-probs: recipe path (fp32) vs r1lite's training forward (bf16) vs r1lite's sampler (the
  merged bf16 copy). The sampler may differ from its own training forward by no more than bf16 does from fp32;
- the GRPO loss (with distinct advantages standing in for the rewards, which are all 0 for this model on
  the recipe's prompt) and its gradient on every LoRA parameter: cosine similarity and relative norm difference
  between the recipe's path (fp32, gradient checkpointing, TRL's fused LM head, SDPA attention) and r1lite's
  (bf16, CPULogProbs, grouped attention).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import DEFAULT_DATA, LORA, MODEL, RECIPE_GRPO, ROWS, SEED  # noqa: E402


def build_trainer(precision: str, gradient_checkpointing: bool, merged: bool, dataset_dir: Path, out: Path):
    from trl import GRPOConfig

    from r1lite.cpu_fast_path import FAST_PATH_PARTS, CPUFastGRPOTrainer
    from r1lite.data import load_prepared
    from r1lite.models import load_model, lora_config
    from r1lite.prompts import SYSTEM_PROMPT
    from r1lite.rewards import build_reward_funcs

    model, tokenizer = load_model(MODEL, precision, device="cpu")
    dataset = load_prepared(str(dataset_dir), "train", SYSTEM_PROMPT, 0, ROWS, tokenizer, 256, SEED)
    config = GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=precision == "bf16",
        max_steps=1,
        gradient_checkpointing=gradient_checkpointing,
        **RECIPE_GRPO,
    )
    trainer = CPUFastGRPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_funcs=build_reward_funcs("seed", None, "raise"),
        parts=FAST_PATH_PARTS if merged else (),
        peft_config=lora_config(LORA["r"], LORA["alpha"], LORA["dropout"], LORA["targets"]),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this check does not run
    return trainer


def lora_params(trainer) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}


def token_logps(trainer, model, inputs) -> torch.Tensor:
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad(), trainer.accelerator.autocast():
        out = model(input_ids=ids, attention_mask=mask)
    logits = out.logits[:, inputs["prompt_ids"].size(1) - 1 : -1].float()
    return (
        torch.log_softmax(logits / trainer.temperature, dim=-1)
        .gather(-1, inputs["completion_ids"].unsqueeze(-1))
        .squeeze(-1)
    )


def loss_and_grads(trainer, inputs) -> tuple[float, torch.Tensor]:
    """The GRPO loss and its LoRA gradient, through the LM head each path trains with."""
    from r1lite.trl_compat import cpu_lm_head

    trainer.model.zero_grad()
    with cpu_lm_head(trainer.log_probs) if "cpu_lm_head" in trainer.parts else nullcontext():
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in lora_params(trainer).values()])
    return loss.item(), grads


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATA)
    p.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "learning_check.json")
    args = p.parse_args(argv)
    from r1lite.models import merged_copy, refresh_merged

    out = Path("/tmp/learning_check")
    recipe = build_trainer("fp32", True, False, args.dataset, out)
    fast = build_trainer("bf16", False, True, args.dataset, out)
    torch.manual_seed(SEED)
    with torch.no_grad():
        for name, param in lora_params(recipe).items():
            if "lora_B" in name:
                param.normal_(std=2e-3)  # a trained adapter changes the output; a fresh one (B = 0) does not
        fast_params = lora_params(fast)
        for name, param in lora_params(recipe).items():
            fast_params[name].copy_(param)

    batch = next(iter(recipe.get_train_dataloader()))
    inputs = recipe._generate_and_score_completions(batch)  # sampled by the recipe's path, scored once
    mask = inputs["completion_mask"].bool()
    # The seed rewards score almost every completion of this model 0 (no signal); give the completions
    # distinct advantages so the policy-gradient term, not only the KL term, is compared.
    rewards_advantages = inputs["advantages"].tolist()
    advantages = torch.randn(len(rewards_advantages), generator=torch.Generator().manual_seed(SEED))
    inputs["advantages"] = (advantages - advantages.mean()) / advantages.std()

    # The reference log-probs enter the loss through the KL term: each path computes its own, as in training.
    fast_inputs = dict(inputs)
    with fast.model.disable_adapter():
        fast_inputs["ref_per_token_logps"] = token_logps(fast, fast.model, inputs)
    merged = merged_copy(fast.accelerator.unwrap_model(fast.model))
    refresh_merged(merged, fast.merge_layers)

    logps = {
        "recipe_fp32": token_logps(recipe, recipe.model, inputs),
        "r1lite_train_bf16": token_logps(fast, fast.model, inputs),
        "r1lite_sampler_merged_bf16": token_logps(fast, merged, inputs),
    }
    loss_recipe, grad_recipe = loss_and_grads(recipe, inputs)
    loss_fast, grad_fast = loss_and_grads(fast, fast_inputs)

    def mean_abs(a, b):
        return (logps[a] - logps[b]).abs()[mask].mean().item()

    report = {
        "completion_tokens": int(mask.sum()),
        "advantages_from_rewards": rewards_advantages,
        "advantages_used": inputs["advantages"].tolist(),
        "logp_mean_abs_diff": {
            "bf16 training forward vs fp32": mean_abs("r1lite_train_bf16", "recipe_fp32"),
            "merged bf16 sampler vs bf16 training forward": mean_abs("r1lite_sampler_merged_bf16", "r1lite_train_bf16"),
            "merged bf16 sampler vs fp32": mean_abs("r1lite_sampler_merged_bf16", "recipe_fp32"),
        },
        "loss": {"recipe_fp32": loss_recipe, "r1lite_bf16": loss_fast},
        "grad_cosine": torch.nn.functional.cosine_similarity(grad_recipe, grad_fast, dim=0).item(),
        "grad_norm": {"recipe_fp32": grad_recipe.norm().item(), "r1lite_bf16": grad_fast.norm().item()},
        "grad_relative_diff": ((grad_recipe - grad_fast).norm() / grad_recipe.norm()).item(),
    }
    print(json.dumps(report, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
