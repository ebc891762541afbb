"""Convert between Hugging Face checkpoints and motif_jax Orbax params.

HF -> workdir (`<workdir>/params`, `model_config.json`, tokenizer files), with a logit check:

  python -m experiments.convert --from_hf=/ckpt/Qwen2.5-0.5B --workdir=/tmp/qwen --check

workdir -> HF (`config.json` + safetensors, sharded past --max_shard_gb; tokenizer files copied;
a training run's workdir exports its final/ params with the tokenizer it trained with):

  python -m experiments.convert --workdir=/tmp/qwen --to_hf=/tmp/qwen_hf --check

Llama, Qwen2 and DiffLlama exports load with `transformers.AutoModelForCausalLM`; Motif exports
keep the released Motif layout, which transformers cannot load without Motif's remote code, so
--check says so instead of printing figures. --check compares fp32 logits on fixed probes
(max |Δlogit| and mean KL(HF||ours)) and, when the directory has a tokenizer.json and a chat
template, the greedy tokens of --check_question from our sampler and from transformers' generate.
"""

from absl import app, flags, logging
import jax

from motif_jax.interop import hf, parity
from motif_jax.model import count_params
from motif_jax.launch import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string("from_hf", None, "Hugging Face checkpoint directory to import.")
flags.DEFINE_string("to_hf", None, "Directory to export a Hugging Face checkpoint into.")
flags.DEFINE_string("workdir", None, "motif_jax workdir holding params/ and model_config.json.")
flags.DEFINE_bool("check", False, "Print logit parity against transformers.")
flags.DEFINE_float("max_shard_gb", 5.0, "Export: largest safetensors file, GiB.")
flags.DEFINE_string("tokenizer_from", None,
                    "Export: copy tokenizer files from this directory (default: the workdir's own, "
                    "else the tokenizer its training run's config.json names).")
flags.DEFINE_string("check_question", "What is 2 + 3?",
                    "--check with a tokenizer and chat template: greedy-decode this question with "
                    "our sampler and with transformers and compare the tokens.")
flags.DEFINE_integer("check_tokens", 32, "--check: greedy tokens to compare.")
flags.mark_flag_as_required("workdir")


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (FLAGS.from_hf is None) == (FLAGS.to_hf is None):
    raise app.UsageError("give exactly one of --from_hf and --to_hf")
  logging.info("devices: %s", jax.devices())
  if FLAGS.from_hf:
    cfg, params = hf.import_checkpoint(FLAGS.from_hf, FLAGS.workdir)
    hf_dir, what = FLAGS.from_hf, f"imported {FLAGS.from_hf} -> {FLAGS.workdir}"
  else:
    cfg, params = hf.export_checkpoint(FLAGS.workdir, FLAGS.to_hf,
                                       max_shard_bytes=int(FLAGS.max_shard_gb * 2**30),
                                       tokenizer_from=FLAGS.tokenizer_from)
    hf_dir, what = FLAGS.to_hf, f"exported {FLAGS.workdir} -> {FLAGS.to_hf}"
  print(f"{what}: {count_params(params):,} params, attention={cfg.attention}, mlp={cfg.mlp}, "
        f"layers={cfg.num_layers}, d_model={cfg.d_model}")
  if FLAGS.check:
    print(parity.report(hf_dir, cfg, params))
    print(parity.report_greedy(hf_dir, cfg, params, FLAGS.check_question,
                               max_new_tokens=FLAGS.check_tokens))


if __name__ == "__main__":
  app.run(main)
