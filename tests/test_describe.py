"""experiments.describe and the shape-only accounting behind it."""

import subprocess
import sys

from configs import motif2_12b, tiny
from motif_jax.model import ModelConfig, accounting


def test_param_bytes_per_device_divide_by_shards():
  cfg = ModelConfig.from_config_dict(motif2_12b.get_config().model)
  one = accounting.param_bytes_per_device(cfg, {})
  assert one == 4 * 12_703_860_896  # float32 master weights, λ vectors float32 too
  # fsdp=8 splits every leaf with an `embed` axis 8 ways. Whole on every device: the λ vectors
  # [40, 128] x 4, SubLN [40, 256] and PolyNorm [40, 3] + [40, 1]: 30,880 parameters.
  whole = 40 * (4 * 128 + 256 + 3 + 1)
  assert whole == 30_880
  expected = 4 * ((12_703_860_896 - whole) // 8 + whole)
  assert accounting.param_bytes_per_device(cfg, dict(fsdp=8)) == expected == 6_352_038_528
  assert accounting.param_bytes_per_device(cfg, dict(fsdp=8, tensor=8)) < one // 60


def test_forward_flops_hand_computed_for_tiny():
  cfg = ModelConfig.from_config_dict(tiny.get_config().model)
  flops = accounting.forward_flops_per_token(cfg, seq_len=1024)
  d, f, v, layers = 256, 512, 512, 4
  matmul = 2 * layers * (d * 20 * 32 + 2 * d * 8 * 32 + 16 * 64 * d + 3 * d * f) + 2 * d * v
  # 20 heads: scores over head_dim 32 and values over 2*32, average causal context 512.
  attention = 2 * 20 * (32 + 64) * 512 * layers
  assert flops == {"matmul": matmul, "attention": attention, "total": matmul + attention}


def test_describe_cli_prints_the_motif_total_and_names_bad_fields():
  run = subprocess.run([sys.executable, "-m", "experiments.describe",
                        "--config=configs/motif2_12b.py", "--mesh=data=1,fsdp=8,tensor=1,sequence=1"],
                       capture_output=True, text=True, check=True)
  assert "12,703,860,896" in run.stdout
  assert "parameter bytes per device on mesh data=1,fsdp=8,tensor=1,sequence=1" in run.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.describe",
                        "--config=configs/motif2_12b.py", "--mesh=tensor=3"],
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "model.num_heads=40 does not divide" in bad.stderr
