"""The context-parallel benchmark's traffic model and HLO reading, on hand-computed values."""

from motif_jax import context_bench


def test_received_bytes_follow_the_two_communication_patterns():
  shape = dict(kv_heads=2, head_dim=4, value_dim=8, dtype="bfloat16")
  # Per token: K and V are 2 x (4 + 8) bf16 = 48 bytes, plus a 4-byte segment id.
  gather = context_bench.received_bytes("allgather", shards=4, seq=64, **shape)
  assert gather == {"forward": 3 * 16 * 52, "backward": 3 * 16 * 52 + 3 * 16 * 48}
  ring = context_bench.received_bytes("ring", shards=4, seq=64, **shape)
  # 3 hops of a 16-token block each way; float32 dK/dV (96 bytes/token) take 4 hops.
  assert ring == {"forward": 3 * 16 * 52, "backward": 3 * 16 * 52 + 4 * 16 * 96}


def test_collective_ops_are_counted_by_kind():
  hlo = """
  %ag = bf16[8,4]{1,0} all-gather(bf16[2,4]{1,0} %p), dimensions={0}
  %cp.1 = f32[2,4]{1,0} collective-permute(f32[2,4]{1,0} %x), source_target_pairs={{0,1}}
  %cp.2 = (f32[2,4]{1,0}, u32[]) collective-permute-start(f32[2,4]{1,0} %y)
  %all-gather-like = f32[1] add(f32[1] %a, f32[1] %b)
  """
  assert context_bench.collective_ops(hlo) == {"all-gather": 1, "collective-permute": 2}
