"""Build a tiny Llama-architecture Hugging Face model locally (nothing downloaded) and toy data.

  python -m experiments.make_tiny_hf --out=/tmp/own/hf --data=/tmp/own

--out gets config.json, model.safetensors, a BPE tokenizer.json trained on the toy corpus and a
tokenizer_config.json with a Jinja chat template; --data gets train.jsonl (chat `messages`),
prompts.jsonl and test.jsonl (prompt + answer). It stands in for a model and data of your own in
the README's "Fine-tune your own model" walkthrough (motif_jax/interop/make_tiny_hf.py).
"""

from absl import app, flags

from motif_jax.interop import make_tiny_hf

_OUT = flags.DEFINE_string("out", None, "Directory for the Hugging Face model.", required=True)
_DATA = flags.DEFINE_string("data", None, "Directory for train/prompts/test JSONL (optional).")
_SEED = flags.DEFINE_integer("seed", 0, "Weight init and tokenizer corpus seed.")
_PRETRAIN = flags.DEFINE_integer(
    "pretrain_steps", 200, "torch AdamW steps on the toy corpus before saving, so the model "
    "already writes the answer format (~0.1 s each on one CPU core); 0 = random init.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = make_tiny_hf.TinyHFConfig(seed=_SEED.value, pretrain_steps=_PRETRAIN.value)
  out = make_tiny_hf.make_tiny_hf(_OUT.value, cfg)
  print(f"wrote a tiny LlamaForCausalLM ({cfg.pretrain_steps} pretraining steps) with its BPE "
        f"tokenizer and chat template to {out}")
  if _DATA.value:
    for name, path in make_tiny_hf.write_toy_data(_DATA.value).items():
      print(f"wrote {name} records to {path}")


if __name__ == "__main__":
  app.run(main)
