"""Kernel benchmark: AOT temp memory at the Motif shapes and wall time at a small shape.

  python -m experiments.bench_kernels --out=/tmp/bench_kernels.json
  python -m experiments.bench_kernels --out=/tmp/bench.json --impls=xla,reference --repeats=3

Cross-entropy: loss + dh + dW at D=4096, V=219,520, bf16, T=8,192 and 65,536 (memory), and
T=2048, D=512, V=32,768 float32 (time). Attention: Motif's GDA core (40 query heads on 16 KV
heads, head dim 128, dual-V 256, bf16, packed segment ids) forward + backward at S=32,768 and
65,536 (memory), and a 10-head, 1,024-token shape (time). All implementations in one run; on
CPU the Pallas kernels run interpreted (see motif_jax/kernel_bench.py). Not a test.
"""

import json

import jax
from absl import app, flags

from motif_jax import kernel_bench
from motif_jax.launch import distributed

_OUT = flags.DEFINE_string("out", None, "JSON output path.", required=True)
_IMPLS = flags.DEFINE_list("impls", ["reference", "xla", "pallas"], "Implementations to run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per implementation (median).")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  impls = tuple(_IMPLS.value)
  result = {
      "cross_entropy": kernel_bench.bench_cross_entropy(impls, _REPEATS.value),
      "attention": kernel_bench.bench_attention(impls, _REPEATS.value),
      "shapes": {"cross_entropy": kernel_bench.CE_SHAPES, "cross_entropy_small": kernel_bench.CE_SMALL,
                 "attention": kernel_bench.ATTN_SHAPES, "attention_small": kernel_bench.ATTN_SMALL},
      "backend": jax.default_backend(), "device": str(jax.devices()[0]),
  }
  ce, attn = result["cross_entropy"], result["attention"]
  print("\nratios measured in this run:")
  if "xla" in ce and "reference" in ce:
    print(f"  cross-entropy xla / reference time at the small shape: "
          f"{ce['xla']['seconds_small'] / ce['reference']['seconds_small']:.2f}")
  for impl, row in attn.items():
    print(f"  attention {impl} temp S=65536 / S=32768: "
          f"{row['temp_bytes_S65536'] / row['temp_bytes_S32768']:.2f}")
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
