"""Fine-tune your own Hugging Face model: SFT, RL and evaluation of an imported checkpoint.

`base` is the workdir `experiments.convert --from_hf` wrote: the model's architecture
(model_config.json), params, tokenizer.json and chat template (tokenizer_config.json). Every
variant takes the model from there, tokenizes with its tokenizer and renders with its own chat
template (data.template.kind=hf), so nothing about the model is typed twice:

  python -m experiments.sft --workdir=/tmp/own/sft \
      --config=configs/finetune.py:base=/tmp/own/base,data=/tmp/own/train.jsonl
  python -m experiments.rl --workdir=/tmp/own/rl \
      --config=configs/finetune.py:rl,base=/tmp/own/base,init=/tmp/own/sft,data=prompts.jsonl
  python -m experiments.evaluate --workdir=/tmp/own/eval \
      --config=configs/finetune.py:evaluate,base=/tmp/own/base,init=/tmp/own/rl,data=test.jsonl

Variants: sft (default), rl, evaluate; base=DIR (required), init=DIR (params to start from or to
evaluate; sft defaults to base), data=FILE (records: SFT messages / prompt-completion files, RL and
evaluation prompts with an `answer`), steps=N, smoke (tiny budgets for tests). The README section
"Fine-tune your own model" walks through it on a tiny Llama built locally.
"""

import json
import os

import ml_collections

from configs import common, evaluate, rl, sft


def model_from(base: str) -> ml_collections.ConfigDict:
  """The imported model's ModelConfig fields (base/model_config.json), as a model section."""
  path = os.path.join(base, "model_config.json")
  if not os.path.exists(path):
    raise ValueError(f"config variant base={base}: no model_config.json there (run "
                     "`python -m experiments.convert --from_hf=HF_DIR --workdir=BASE` first)")
  with open(path) as f:
    values = json.load(f)
  model = common.model()
  for key, value in values.items():
    if key != "sharding":  # the trainer's default rules (common.model), not the saved ones
      model[key] = value
  return model


def _hf_template(data: ml_collections.ConfigDict, base: str) -> None:
  data.tokenizer = os.path.join(base, "tokenizer.json")
  data.template.kind = "hf"  # the model's own chat template; eos is the model's
  data.template.path = base


def _variant(args, name: str) -> str:
  """The base config's variant, with steps=N passed on (it also sets the LR schedule length)."""
  return f"{name},steps={args.steps}" if args.steps else name


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, sft=False, rl=False, evaluate=False, base="", init="", data="",
                          steps=0, smoke=False)
  if not args.base:
    raise ValueError("configs/finetune.py needs base=DIR (the experiments.convert --from_hf "
                     "workdir), e.g. --config=configs/finetune.py:base=/tmp/own/base")
  if args.rl:
    return _rl(args)
  if args.evaluate:
    return _evaluate(args)
  return _sft(args)


def _sft(args) -> ml_collections.ConfigDict:
  config = sft.get_config(_variant(args, "smoke" if args.smoke else "stage1"))
  config.model = model_from(args.base)
  _hf_template(config.data, args.base)
  config.data.inputs = args.data  # your records (JSONL/Parquet): messages or prompt/response
  config.data.filter_on_load = False  # run experiments.filter_data first to curate
  config.train.init_from = args.init or args.base
  config.train.eval_problems = 0  # the toy held-out ladder is not your task: use evaluate
  config.optim.learning_rate = 1e-3  # peak; a pretrained model wants less than a fresh one
  return config


def _rl(args) -> ml_collections.ConfigDict:
  config = rl.get_config(_variant(args, "smoke" if args.smoke else "quickstart"))
  config.model = model_from(args.base)
  _hf_template(config.data, args.base)
  config.data.filter_on_load = False
  config.rl.init_from = args.init  # the SFT workdir (its final/)
  config.train.prompts = args.data  # prompt records with `answer` (rewarded by exact match)
  # rl.domains stays "arith,lists" (the walkthrough's); set --config.rl.domains to your records'
  # domains (and --config.rewards.terms.<domain> for their rewards; default exact + format).
  config.train.eval_problems = 0
  if args.smoke:  # room for a think block and an answer, so the format reward can vary
    config.train.max_new_tokens = 96
  return config


def _evaluate(args) -> ml_collections.ConfigDict:
  config = evaluate.get_config("smoke,greedy" if args.smoke else "greedy")
  config.checkpoint = args.init or args.base
  config.data = args.data or "toy"
  config.tokenizer = os.path.join(args.base, "tokenizer.json")
  config.template.kind = "hf"
  config.template.path = args.base
  return config
