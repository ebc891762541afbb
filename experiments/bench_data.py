"""Input-pipeline throughput: packed tokens per second with 0, 1 and 2 Grain worker processes.

Curates the configured inputs once, then times `--batches` packed batches per worker count (the
first batch, which pays for process start-up, is timed separately). A trainer never waits on data
when tokens_per_s exceeds its own tokens per second.

  python -m experiments.bench_data --out=/tmp/bench_data.json
  python -m experiments.bench_data --config=configs/data.py:smoke --workers=0,2 --out=/tmp/b.json

`--read_processes=N` first times how long process 0 of N takes to hold its records (each round:
parse everything then slice, vs index the files and parse its shard; `data.inputs` files,
`data.filter_on_load=False`):

  python -m experiments.bench_data --config.data.inputs=big.jsonl --config.data.filter_on_load=False \
      --read_processes=8 --workers= --out=/tmp/bench_read.json
"""

import json

from absl import app, flags
from ml_collections import config_flags

from motif_jax.data import curate, pipeline
from motif_jax.data.config import DataConfig
from motif_jax.launch import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/data.py", "Config file[:variant].",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "JSON output path.", required=True)
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to time.")
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches timed per worker count.")
_READ = flags.DEFINE_integer("read_processes", 0, "Time one process's reading of its shard of "
                             "this many (0 = skip).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds of the reading measurement.")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  cfg = DataConfig.from_config_dict(_CONFIG.value.data)
  reading = [pipeline.measure_reading(cfg, process_count=_READ.value)
             for _ in range(_ROUNDS.value if _READ.value else 0)]
  for name in ("eager_s", "index_s", "lazy_s") if reading else ():
    times = sorted(r[name] for r in reading)
    print(f"read {name:8s} min {times[0]:.3f} median {times[len(times) // 2]:.3f} "
          f"max {times[-1]:.3f} s  ({reading[0]['items']} items, shard of "
          f"{reading[0]['shard_items']})")
  records, _ = pipeline.load_sft_records(cfg)
  tokenizer = curate.make_tokenizer(cfg)
  results = []
  print(f"{len(records)} records, rows of {cfg.seq_len} tokens, batch {cfg.global_batch_size}")
  print(f"{'workers':>8}{'startup s':>11}{'tokens/s':>12}{'batches/s':>11}{'fill':>7}")
  for workers in map(int, _WORKERS.value):
    ds = pipeline.build_sft_dataset(
        records, tokenizer=tokenizer, template=cfg.template, seq_len=cfg.seq_len,
        global_batch_size=cfg.global_batch_size, seed=cfg.seed, shuffle=cfg.shuffle,
        num_epochs=0, packing_bins=cfg.packing_bins, process_index=0, process_count=1,
        workers=workers, worker_buffer=cfg.worker_buffer, prefetch=cfg.prefetch)
    r = dict(workers=workers, **pipeline.measure_throughput(ds, num_batches=_BATCHES.value))
    results.append(r)
    print(f"{workers:>8}{r['startup_s']:>11.2f}{r['tokens_per_s']:>12,.0f}"
          f"{r['batches_per_s']:>11.1f}{r['fill']:>7.2f}")
  with open(_OUT.value, "w") as f:
    json.dump(dict(records=len(records), seq_len=cfg.seq_len, reading=reading,
                   global_batch_size=cfg.global_batch_size, packing_bins=cfg.packing_bins,
                   results=results), f, indent=2)


if __name__ == "__main__":
  app.run(main)
