"""GPU validation in one command: parity, kernel speed and memory, an SFT step, the sampler.

  python -m experiments.gpu_check --out=DIR [--budget_s=420] [--only=parity,kernels] [--dry_run]

On a lent GPU (from the project root; ../shared/tools/gpu_wheels.sh prints the install line):
  <line printed by gpu_wheels.sh> python -m experiments.gpu_check --out=$OUT
On CPU, --dry_run runs every part at tiny shapes (Pallas interpret mode, cuDNN skipped).
Writes DIR/gpu_results.json and DIR/gpu_results.md (append to docs/gpu_results.md); the short
table printed last is what a device tool's output tail shows. See motif_jax/bench/gpu_check.py.
"""

from pathlib import Path

from absl import app, flags

from motif_jax.bench import gpu_check, gpu_report

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_BUDGET = flags.DEFINE_float("budget_s", 420.0, "Wall-clock budget for all parts, seconds.")
_ONLY = flags.DEFINE_list("only", [], "Parts to run (default all): parity,kernels,step,sampler.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "CPU: tiny shapes, interpret mode.")


def main(argv):
  del argv
  result = gpu_check.run_check(Path(_OUT.value), budget_s=_BUDGET.value, only=_ONLY.value,
                               dry_run=_DRY_RUN.value)
  print(f"wrote {Path(_OUT.value) / 'gpu_results.json'} and gpu_results.md")
  print(gpu_report.short_table(result))


if __name__ == "__main__":
  app.run(main)
