"""Context-parallel attention: all-gathered K/V vs ring, side by side in one run.

  python -m experiments.bench_context --out=/tmp/bench_context.json
  python -m experiments.bench_context --out=/tmp/bench_context.json --methods=ring --repeats=5

Per-device AOT temp memory and received bytes (traffic model) of one GDA signal-attention
forward + backward at Motif's shapes (bf16, S = 32,768 and 65,536 tokens over sequence = 4 and
8 ranks), and the wall time at a small float32 shape on 8 ranks (see motif_jax/context_bench.py).
Runs on 8 fake CPU devices. Not a test.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import json  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from motif_jax import context_bench  # noqa: E402
from motif_jax.launch import distributed  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "JSON output path.", required=True)
_METHODS = flags.DEFINE_list("methods", list(context_bench.METHODS), "Methods to compare.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per method (median).")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  if len(jax.devices()) < 8:
    raise SystemExit(f"needs 8 devices, found {len(jax.devices())}")
  results = context_bench.bench(tuple(_METHODS.value), _REPEATS.value)
  out = {"methods": results, "shapes": context_bench.SHAPES, "small": context_bench.SMALL,
         "backend": jax.default_backend(), "device": str(jax.devices()[0])}
  if {"allgather", "ring"} <= set(results):
    ag, ring = results["allgather"], results["ring"]
    print("\nratios measured in this run (ring / allgather):")
    for key in (k for k in ag if k.startswith("S")):
      moved = [sum(m[key]["received_bytes"].values()) for m in (ring, ag)]
      print(f"  {key}: temp {ring[key]['temp_bytes'] / ag[key]['temp_bytes']:.2f}, "
            f"received bytes {moved[0] / moved[1]:.2f}")
    print(f"  small-shape time: {ring['seconds_small'] / ag['seconds_small']:.2f}")
  with open(_OUT.value, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
