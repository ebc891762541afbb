"""Exact and near-duplicate removal: a hash of the normalized text, then MinHash + LSH.

Text is lower-cased with whitespace collapsed; near duplicates are judged on character n-gram
shingles. A record's MinHash signature (`num_perm` values) is split into `bands`; records sharing
any band are candidates, and a candidate whose signatures agree on at least `threshold` of their
values (the MinHash estimate of Jaccard similarity) is a near duplicate. The first occurrence is
kept, so the result depends on input order: run it in one process, in a fixed order.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import re
import zlib

import numpy as np

_PRIME = (1 << 31) - 1  # hashes and permutation coefficients stay below 2^31: products fit uint64
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
  return _SPACE.sub(" ", text.lower()).strip()


def shingle_hashes(text: str, n: int) -> np.ndarray:
  """Sorted unique 31-bit hashes of the character n-grams of `text` (the whole text if shorter)."""
  grams = {text[i:i + n] for i in range(max(1, len(text) - n + 1))}
  hashes = [zlib.crc32(g.encode()) % _PRIME for g in grams]  # deterministic across processes
  return np.unique(np.array(hashes, dtype=np.uint64))


def minhash(hashes_s: np.ndarray, num_perm: int, *, seed: int = 0) -> np.ndarray:
  """[num_perm] signature: min over shingles of (a·h + b) mod p, one random (a, b) per row."""
  a_p, b_p = _coefficients(num_perm, seed)
  return ((a_p[:, None] * hashes_s[None, :] + b_p[:, None]) % _PRIME).min(axis=1)


@functools.lru_cache(maxsize=8)
def _coefficients(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return (rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64),
          rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64))


class Deduplicator:
  """Stateful: `check(text)` returns a drop reason for duplicates and remembers the rest."""

  def __init__(self, *, shingle_chars: int, num_perm: int, bands: int, threshold: float):
    self.shingle_chars, self.num_perm, self.bands = shingle_chars, num_perm, bands
    self.threshold = threshold
    self._exact: set[bytes] = set()
    self._buckets: dict[tuple[int, bytes], list[int]] = collections.defaultdict(list)
    self._signatures: list[np.ndarray] = []

  def check(self, text: str) -> str | None:
    norm = normalize(text)
    digest = hashlib.blake2b(norm.encode()).digest()
    if digest in self._exact:
      return "exact_duplicate"
    signature = minhash(shingle_hashes(norm, self.shingle_chars), self.num_perm)
    keys = [(band, rows.tobytes()) for band, rows in enumerate(np.split(signature, self.bands))]
    candidates = sorted({i for key in keys for i in self._buckets.get(key, ())})
    if candidates:
      agreement_c = (np.stack([self._signatures[i] for i in candidates]) == signature).mean(1)
      if agreement_c.max() >= self.threshold:
        return "near_duplicate"
    self._exact.add(digest)
    for key in keys:
      self._buckets[key].append(len(self._signatures))
    self._signatures.append(signature)
    return None
