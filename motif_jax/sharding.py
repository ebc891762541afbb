"""Device mesh, logical-to-mesh sharding rules, and activation constraints.

Logical axes are a closed set of words (`LOGICAL_AXES`); every parameter declares its logical axes
once, where it is declared (`model/params.py`). `ShardingRules` maps each logical axis to zero, one
or several of the four mesh axes in `MESH_AXES`. There are no regexes over parameter paths.

FSDP semantics: the mesh axes that carry the batch in activations (`rules.batch`, by default
`("data", "fsdp")`) shard *parameters* only. `activation_rules` drops them from every other
logical axis, so `embed -> fsdp` shards weights while activations stay batch-sharded. The same
holds for the sequence axis: `embed=("fsdp", "sequence")` also shards weights over the
context-parallel ranks (64K-token rows: one row spread over 8 devices, weights 8-way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
LOGICAL_AXES = ("batch", "seq", "embed", "heads", "kv_heads", "head_dim", "ffw", "vocab", "layers")

MeshAxes = str | tuple[str, ...] | None


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  if axes is None:
    return ()
  if isinstance(axes, str):
    return (axes,)
  return tuple(axes)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """Logical axis -> mesh axes. One field per logical axis; `None` means replicated."""

  batch: MeshAxes = ("data", "fsdp")
  seq: MeshAxes = "sequence"
  embed: MeshAxes = "fsdp"
  heads: MeshAxes = "tensor"
  kv_heads: MeshAxes = "tensor"
  head_dim: MeshAxes = None
  ffw: MeshAxes = "tensor"
  vocab: MeshAxes = "tensor"
  layers: MeshAxes = None

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      axes = _as_tuple(value)
      # Normalize lists (from ml_collections) to tuples so the rules stay hashable.
      if value is not None and not isinstance(value, str):
        object.__setattr__(self, field.name, axes)
      for axis in axes:
        if axis not in MESH_AXES:
          raise ValueError(
              f"sharding rule {field.name}={value!r}: unknown mesh axis {axis!r}; "
              f"mesh axes are {MESH_AXES}")
      if len(set(axes)) != len(axes):
        raise ValueError(f"sharding rule {field.name}={value!r} repeats a mesh axis")

  def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
    if logical is None:
      return ()
    if logical not in LOGICAL_AXES:
      raise ValueError(f"unknown logical axis {logical!r}; logical axes are {LOGICAL_AXES}")
    return _as_tuple(getattr(self, logical))


def activation_rules(rules: ShardingRules) -> ShardingRules:
  """Rules for activations: mesh axes used by the batch are removed from every other axis, and
  those of the sequence from every axis but the batch (FSDP over the sequence axis:
  `embed=("fsdp", "sequence")` shards weights 8 ways on a sequence=8 mesh while activations stay
  sequence-sharded)."""
  batch_axes = set(_as_tuple(rules.batch))
  seq_axes = set(_as_tuple(rules.seq)) - batch_axes
  updates = {}
  for name in LOGICAL_AXES:
    if name == "batch":
      continue
    dropped = batch_axes if name == "seq" else batch_axes | seq_axes
    kept = tuple(a for a in _as_tuple(getattr(rules, name)) if a not in dropped)
    updates[name] = kept if kept else None
  return dataclasses.replace(rules, **updates)


def spec_for(logical_axes: Sequence[str | None], rules: ShardingRules) -> PartitionSpec:
  """PartitionSpec for an array whose dims carry `logical_axes`; raises on a reused mesh axis."""
  used: dict[str, str] = {}
  parts = []
  for logical in logical_axes:
    axes = rules.mesh_axes(logical)
    for axis in axes:
      if axis in used:
        raise ValueError(
            f"logical axes {used[axis]!r} and {logical!r} both map to mesh axis {axis!r} "
            f"in {tuple(logical_axes)}")
      used[axis] = logical
    parts.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*parts)


def shard_count(logical: str | None, rules: ShardingRules, mesh_shape: Mapping[str, int]) -> int:
  """Number of shards a dimension with this logical axis is split into on `mesh_shape`."""
  return int(np.prod([mesh_shape.get(a, 1) for a in rules.mesh_axes(logical)], dtype=np.int64))


def parse_mesh(text: str) -> dict[str, int]:
  """'data=1,fsdp=8' -> {'data': 1, 'fsdp': 8, 'tensor': 1, 'sequence': 1}."""
  shape = {axis: 1 for axis in MESH_AXES}
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, value = item.partition("=")
    if not sep or name not in MESH_AXES:
      raise ValueError(f"--mesh item {item!r}: expected AXIS=N with AXIS in {MESH_AXES}")
    if not (value.isdigit() and int(value) >= 1) and value != "-1":
      raise ValueError(f"--mesh item {item!r}: size must be a positive integer or -1 (the rest)")
    shape[name] = int(value)
  return shape


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 4-axis mesh (`MESH_AXES` order) with Auto axis types (jit + sharding-constraint style).

  One axis may be -1: it takes all remaining devices. A single process may build a mesh over
  the first devices only (e.g. a 1-device run on a host with 8); several processes must use all.
  """
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; mesh axes are {MESH_AXES}")
  sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
  devices = list(jax.devices() if devices is None else devices)
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {dict(shape)}: sizes must be positive, with at most one -1")
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    if len(devices) % rest:
      raise ValueError(f"mesh {dict(shape)}: {len(devices)} devices do not divide by {rest}")
    sizes[sizes.index(-1)] = len(devices) // rest
  sizes = tuple(sizes)
  needed = int(np.prod(sizes))
  if needed > len(devices) or (needed < len(devices) and jax.process_count() > 1):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {needed} devices, "
                     f"{len(devices)} are available")
  devices = devices[:needed]
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None],
                   rules: ShardingRules) -> NamedSharding:
  return NamedSharding(mesh, spec_for(logical_axes, rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: ShardingRules) -> jax.Array:
  """Sharding constraint on an activation; a no-op when no mesh is set (`jax.set_mesh`)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, activation_spec(logical_axes, rules, mesh))


def single_device() -> bool:
  """True when no mesh is set (`jax.set_mesh`) or the mesh has one device."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or math.prod(mesh.axis_sizes) == 1


def activation_spec(logical_axes: Sequence[str | None], rules: ShardingRules,
                    mesh) -> PartitionSpec:
  """Activation PartitionSpec on `mesh`, without the mesh axes it lacks (e.g. no "sequence")."""
  return present_spec(spec_for(logical_axes, activation_rules(rules)), mesh)


def present_spec(spec: PartitionSpec, mesh) -> PartitionSpec:
  """`spec` without the mesh axes that `mesh` lacks."""
  names = set(mesh.axis_names)
  parts = []
  for part in spec:
    axes = tuple(a for a in _as_tuple(part) if a in names)
    parts.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*parts)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
  """`jax.set_mesh(mesh)` as a context manager, or nothing when `mesh` is None."""
  if mesh is None:
    yield
    return
  with jax.set_mesh(mesh):
    yield
