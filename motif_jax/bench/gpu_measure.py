"""Measuring tools of the GPU check: relative errors, timing, memory, the device and its peak.

Errors follow /work/.library/device/METHOD.md: ||out - ref|| / ||ref|| in float64 against a
float32 reference on upcast inputs; NaN or inf in an output never passes. Times: one warm-up
call (compile, autotune), then `repeats` calls each ended by `block_until_ready`; median, min
and max. Memory: the compiled program's temp bytes (`memory_analysis`, what the program itself
allocates beyond its arguments and outputs) and, where the backend reports it, the process's
`peak_bytes_in_use` after the case (a running maximum: `peak_figures`).
"""

from __future__ import annotations

import importlib.metadata
import statistics
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Relative-error thresholds by the dtype the kernel computes in (METHOD.md: float32 lands far
# under 1e-3, tf32 near 3e-4; bf16 operands between 1e-3 and 1e-2).
TOLERANCE = {"float32": 2e-3, "bfloat16": 2e-2}

# Dense bf16 matrix peak (TFLOP/s, no sparsity) by device kind, from NVIDIA's datasheets.
PEAK_BF16_TFLOPS = (("h200", 989.4), ("gh200", 989.4), ("h100 pcie", 756.5), ("h100", 989.4),
                    ("a100", 312.0))


def peak_bf16_flops(device_kind: str) -> float | None:
  kind = device_kind.lower()
  for name, tflops in PEAK_BF16_TFLOPS:
    if name in kind:
      return tflops * 1e12
  return None


def environment() -> dict:
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "jaxlib": _version("jaxlib"), "jax_cuda_plugin": _version("jax-cuda12-plugin"),
          "peak_bf16_tflops": (None if (p := peak_bf16_flops(device.device_kind)) is None
                               else p / 1e12)}


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def rel_err(out, ref) -> float:
  """||out - ref|| / ||ref|| in float64; NaN when out is not finite everywhere."""
  out64 = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  ref64 = np.asarray(jnp.asarray(ref, jnp.float32), np.float64)
  if out64.shape != ref64.shape:
    raise ValueError(f"shape {out64.shape} differs from the reference's {ref64.shape}")
  if not np.isfinite(out64).all():
    return float("nan")
  return float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), 1e-30))


def compare(outputs: Mapping[str, jax.Array], refs: Mapping[str, jax.Array], dtype) -> dict:
  """{"errors": {name: rel err}, "tolerance", "passed"}: passed iff every error is <= tolerance
  (a NaN error fails)."""
  tol = TOLERANCE[jnp.dtype(dtype).name]
  errors = {name: rel_err(outputs[name], refs[name]) for name in refs}
  return {"errors": errors, "tolerance": tol,
          "passed": bool(all(e <= tol for e in errors.values()))}


def time_stats(fn: Callable, args: tuple, *, repeats: int = 5) -> dict:
  """Median / min / max seconds of fn(*args) after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "repeats": repeats}


def memory_stats() -> dict:
  """Device allocator figures where the backend reports them (GPU), else {}."""
  stats = jax.devices()[0].memory_stats() or {}
  keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
  return {k: int(stats[k]) for k in keys if k in stats}


def peak_figures(peak_before: int | None) -> dict:
  """The allocator's peak after a case. It is a running maximum over the process, so it is this
  case's peak only if the case raised it; otherwise the case peaked at most there."""
  peak = memory_stats().get("peak_bytes_in_use")
  if peak is None:
    return {}
  if peak_before is None or peak > peak_before:
    return {"peak_bytes_in_use": peak}
  return {"peak_at_most_bytes": peak}


def compiled_memory(jitted, args: tuple) -> dict:
  """Compiled temp / argument / output bytes of a jitted function on these (abstract) args."""
  stats = jitted.lower(*args).compile().memory_analysis()
  return {"temp_bytes": int(stats.temp_size_in_bytes),
          "argument_bytes": int(stats.argument_size_in_bytes),
          "output_bytes": int(stats.output_size_in_bytes)}


def random_normal(key, shape, dtype, scale: float = 1.0) -> jax.Array:
  return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def upcast(*xs):
  return tuple(None if x is None else x.astype(jnp.float32) for x in xs)
