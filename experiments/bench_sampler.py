"""Sampler benchmark: generated tokens/s, cold and warm (see motif_jax/bench/sampler.py).

  python -m experiments.bench_sampler --out=/tmp/bench_sampler.json
  python -m experiments.bench_sampler --out=/tmp/a.json --parts=llama --rounds=5
  python -m experiments.bench_sampler --out=/tmp/a.json --parts=llama --drafts=0,2,3,4

(a) `llama`: the tiny Llama of the Tunix side-by-side (8 x 32 prompt tokens + 128 greedy) on the
default device (one CPU device unless XLA_FLAGS asks for more). (b) `rl`: the tiny Motif model,
16 prompts x 8 samples, 256 new tokens at temperature 1, shared prefill vs the prompt repeated
per sample. Not a test.
"""

import json

import jax
from absl import app, flags

from motif_jax.bench import sampler
from motif_jax.launch import distributed

_OUT = flags.DEFINE_string("out", None, "JSON output path.", required=True)
_PARTS = flags.DEFINE_list("parts", ["llama", "rl"], "Which shapes: llama (a), rl (b).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per shape.")
_WARM = flags.DEFINE_integer("warm_calls", 3, "Warm calls per round for (a).")
_DRAFTS = flags.DEFINE_list("drafts", ["0"], "draft_tokens values timed side by side for (a) "
                            "(0 = no speculative decoding); the first is the headline figure.")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  result = {"backend": jax.default_backend(), "devices": len(jax.devices()),
            "load_before": sampler.load()}
  if "llama" in _PARTS.value:
    result["llama"] = sampler.bench_llama(_ROUNDS.value, _WARM.value,
                                          tuple(int(k) for k in _DRAFTS.value))
  if "rl" in _PARTS.value:
    result["rl"] = sampler.bench_rl_shape(_ROUNDS.value)
  result["load_after"] = sampler.load()
  print(sampler.table(result))
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
