"""Every backend-dependent choice of the library, in one place, chosen from `jax.default_backend()`.

The library's numerics are the same on every backend; what differs is how the work is laid out for the
hardware: how many items a retrieval block holds and how it is tiled, which exact integer inner product
'auto' ranks codes with, which sparse kernel propagates LightGCN, when search results are copied to the
host. Those choices live here and nowhere else; the code reads them with `tunings()` at the point where it
makes the choice (host side, or as a static argument of a jitted function, so a compiled search never keeps
a stale choice). Any tuning changes speed only: every choice below gives the same ranking (integer keys are
exact whichever inner product computes them) and the same propagation up to float32 summation order.

Why each value (CPU values are the ones measured on a 2-core x86 CPU, results/retrieval.md and
results/foundation.md; GPU values are chosen from the H100/H200 datasheet rates and XLA:GPU's lowering and
are checked by `experiments/gpu_bench.py`, which times both sides of each GPU choice):

* `item_tile`: on CPU a block is scored in tiles of ~1024 items so each tile's (B, tile) scores stay in
  cache between the matmul that writes them and the masked group maximum that reads them (1.8x on Gowalla).
  On a GPU the scores of a matmul go to HBM whatever the tile (XLA:GPU does not fuse a reduction over the
  output columns into the GEMM), and `lax.map` over 64 tiles would serialise 64 small launches per block:
  one tile per block (0 = the whole block).
* `block_items` / `batch_users`: items per scanned block and users per jitted call. On CPU 65,536 x 1,024
  (the mask and the running top-K stay small). On a GPU larger blocks mean fewer scan steps and launches,
  and more users per call read the item table fewer times: 131,072 x 4,096 (a block's float32 scores are
  2 GiB, far inside 141 GB of HBM; Gowalla's 40,981 items are then one block).
* `one_bit_kind`: 1-bit 'auto' codes. CPU: packed XOR + popcount (`hamming`), 8 bytes per item at d = 64
  and fused by XLA:CPU into one vectorised loop. GPU/TPU: the +-1 codes as int8 (`int8`) on the matrix
  units: an H100/H200 does 1,979 dense int8 TOPS but POPC issues at 16 per clock per SM (CUDA programming
  guide's throughput table; ~4.2e12/s on 132 SMs at 1.98 GHz), so at d = 64 the tensor cores score ~15e12
  pairs/s against ~2e12 for popcount. Same integer P = d - 2 * Hamming either way.
* `wide_kind`: 'auto' for 2-8 bit codes. CPU: one float32 matmul while it is exact (d 4^(b-1) < 2^24),
  else int8 (`float_when_exact`; XLA:CPU's float32 GEMM is its fastest). GPU/TPU: always int8 x int8 ->
  int32 (`int8`): exact for every d we allow, and float32 at HIGHEST precision runs on the GPU's CUDA cores
  (~67 TFLOP/s) instead of the int8 tensor cores (~1,979 TOPS).
* `sparse_kernel`: LightGCN's 'csr' aggregation. CPU: `jax.experimental.sparse.BCSR` (`bcsr`), which
  XLA:CPU runs as one sparse-dense FFI kernel (~10x jraph's gather + scatter on Gowalla). On GPU, BCSR
  lowers to cuSPARSE only under the `jax_bcoo_cusparse_lowering` flag (off by default); otherwise it is
  JAX's generic lowering, a gather + sorted scatter-add like jraph's `segment_sum` plus an indptr -> row
  expansion per call. So the GPU sums the same CSR arrays with a sorted `segment_sum` (`segment`).
* `defer_host_copies`: the search copies each user batch's result to the host before dispatching the next
  (CPU: kept as it was timed in results/retrieval.md; on 2 cores the host's numpy work would compete with
  XLA's threads). On a GPU the host's exclusion lists for batch b + 1 are built while batch b runs, and the
  results are fetched at the end.
* `retrieval_kernel`: how `retrieval.topk` searches. CPU: `native`, the compiled kernel of
  `hq_jax.retrieval.native` (csrc/hq_topk.cc through `jax.ffi`: scoring, exclusion and a per-user top-K
  fused, AVX-512 popcount / VNNI, both cores), when it is built and loads (else the JAX search, silently: the
  same ranking for integer keys; for float rows both are float32 evaluations, see `native`). XLA:CPU cannot
  fuse the selection into the scoring, and its `top_k` costs more than the arithmetic (results/retrieval.md):
  at Gowalla size the kernel is several times faster than the JAX search. GPU/TPU: `jax` (the kernel is
  x86 CPU code; the accelerator runs the blocked JAX search).
* `bandwidth_probe_bytes`: the array a benchmark's bandwidth probe reduces: 256 MiB on CPU (several times
  the last-level cache), 2 GiB on a GPU (launch overhead < 1% of the ~0.5 ms read).

Choices that do not depend on the backend (so they are not here): ranking keys are mapped to float32 before
`lax.top_k` (`limbs.encode_int32`) on every backend, because XLA:CPU's integer top-k is ~10x slower and
XLA:GPU's specialised TopK kernel is built for float32 and bfloat16 only (integer types take the sort-based
decomposition); the candidate rescoring's dimension unrolling (`topk.UNROLL_DIMS`) bounds program size,
not speed.
"""

import contextlib
import contextvars
import dataclasses
from typing import Iterator, Literal

import jax

Backend = Literal["cpu", "gpu", "tpu"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tunings:
  """How the library lays out its work for one backend (see the module docstring for each value's reason)."""

  backend: str  # the `jax.default_backend()` these were chosen for ('cpu', 'gpu', 'tpu')
  item_tile: int  # items scored at a time inside a retrieval block; 0 = the whole block at once
  block_items: int  # default items per scanned retrieval block (`topk`, `sharded_topk`)
  batch_users: int  # default users per jitted search / evaluation call
  one_bit_kind: Literal["hamming", "int8"]  # the 'auto' raw inner product of 1-bit codes
  wide_kind: Literal["float_when_exact", "int8"]  # the 'auto' raw inner product of 2-8 bit codes
  sparse_kernel: Literal["bcsr", "segment"]  # how `graph.csr_aggregate` multiplies by the CSR adjacency
  defer_host_copies: bool  # search: fetch every batch's result after all batches are dispatched
  bandwidth_probe_bytes: int  # bytes the benchmarks' memory-bandwidth probe reads
  retrieval_kernel: Literal["native", "jax"] = "jax"  # `retrieval.topk`: the compiled CPU kernel or the JAX search


CPU = Tunings(backend="cpu", item_tile=1024, block_items=65536, batch_users=1024, one_bit_kind="hamming",
              wide_kind="float_when_exact", sparse_kernel="bcsr", defer_host_copies=False,
              bandwidth_probe_bytes=1 << 28, retrieval_kernel="native")
GPU = Tunings(backend="gpu", item_tile=0, block_items=131072, batch_users=4096, one_bit_kind="int8",
              wide_kind="int8", sparse_kernel="segment", defer_host_copies=True, bandwidth_probe_bytes=1 << 31,
              retrieval_kernel="jax")
# TPU: the GPU's reasoning (matrix units for integer products, no cache-sized tiles, no BCSR kernel), with
# the CPU's block sizes: TPU HBM is 16-95 GB per chip and nothing here was measured on one.
TPU = dataclasses.replace(GPU, backend="tpu", block_items=65536, batch_users=1024)

_BY_BACKEND = {"cpu": CPU, "gpu": GPU, "cuda": GPU, "rocm": GPU, "tpu": TPU}


def for_backend(name: str) -> Tunings:
  """The tunings of a backend by name ('cpu', 'gpu' / 'cuda' / 'rocm', 'tpu'); unknown ones get the CPU's."""
  return _BY_BACKEND.get(name.lower(), CPU)


_OVERRIDE: contextvars.ContextVar[Tunings | None] = contextvars.ContextVar("hq_jax_tunings", default=None)


def tunings() -> Tunings:
  """The tunings of the current default backend (read at every call: cheap, and never stale), or the ones
  set by an enclosing `override`."""
  return _OVERRIDE.get() or for_backend(jax.default_backend())


@contextlib.contextmanager
def override(t: Tunings) -> Iterator[Tunings]:
  """Within the block, `tunings()` returns `t` (benchmarks time both sides of a choice with it, e.g.
  `with override(dataclasses.replace(tunings(), item_tile=1024)): ...`). Every choice reads `tunings()` on the
  host or passes it to jit as a static argument, so a compiled function never keeps the other side's value."""
  token = _OVERRIDE.set(t)
  try:
    yield t
  finally:
    _OVERRIDE.reset(token)
