"""Sparse updates of an embedding table: a step reads and writes only the rows its batch uses.

Dense Adam on a CTR table reads and writes all N x D entries of W, m and v at every step (and autodiff of
W[ids] builds an (N, D) gradient), so a step costs O(table) however small the batch. Here the table's
optimizer is a pure function on (table, state, unique row ids, row gradients) that gathers the touched rows,
updates them and writes them back with `.at[ids].set`, so a step costs O(batch) (`*_rows`: the step of the
gathered rows alone, which the trainer writes back itself):

- `lazy_adam_update`: Adam on the touched rows only, as TensorFlow's LazyAdamOptimizer and
  torch.optim.SparseAdam. The moments of untouched rows are not decayed; the bias correction uses the global
  step count. The per-element formula is optax's `adam` (Kingma & Ba 2014, arXiv 1412.6980), so it equals
  dense Adam exactly when every row is touched at every step.
- `rowwise_adagrad_update`: one accumulator per row, G_r += mean_d g_rd^2 and w_r -= lr g_r / (sqrt(G_r) +
  eps), as FBGEMM / torchrec's EXACT_ROWWISE_ADAGRAD (Duchi et al. 2011 with a per-row accumulator): an (N,)
  state instead of Adam's two (N, D) ones.

`unique_rows` dedupes a batch's ids under a static bound (`jnp.unique(size=...)`), so shapes stay fixed under
jit: padded slots hold the distinct out-of-range ids N, N + 1, ..., read as zero rows (`gather_rows`) and
dropped by every scatter (`mode='drop'`); the ids are sorted and distinct, which XLA is told. The trainer
(`train.make_train_step` with a `TableOptimizer`) differentiates the loss with respect to the gathered rows,
never the table, and keeps the dense layers and quantizer parameters on optax Adam. Untouched rows keep
their values and optimizer state exactly (no decay, no L2, no ALPT write-back). The dedupe is a sort of the
batch's B x F ids: O(B F log(B F)) and, on a CPU, the largest part of a sparse step's table work.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# config.train.table_optimizer: 'dense_adam' (the table on the dense layers' optax Adam) or a sparse one.
TABLE_OPTIMIZERS = ("dense_adam", "lazy_adam", "rowwise_adagrad")


def unique_rows(ids: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """The distinct ids of a batch under a static bound, and where each id sits among them.

  Args:
    ids: (...) int feature ids in [0, num_rows).
    num_rows: N, the table's rows.

  Returns:
    unique: (U,) int32 sorted distinct ids, U = min(ids.size, N) (static), padded with N, N + 1, ...
    inverse: ids' shape, int32 index of each id in `unique` (so `unique[inverse] == ids`).
  """
  flat = ids.reshape(-1).astype(jnp.int32)
  size = min(flat.shape[0], num_rows)
  unique, inverse = jnp.unique(flat, size=size, fill_value=num_rows, return_inverse=True)
  padding = jnp.arange(size, dtype=jnp.int32) - jnp.sum(unique < num_rows, dtype=jnp.int32)
  return jnp.where(unique < num_rows, unique, num_rows + padding), inverse.reshape(ids.shape)


def gather_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
  """table[ids] (U, ...) for sorted distinct `ids`, with zero rows for padded (out-of-range) ids."""
  return table.at[ids].get(mode="fill", fill_value=0, indices_are_sorted=True, unique_indices=True)


def scatter_rows(table: jax.Array, ids: jax.Array, rows: jax.Array) -> jax.Array:
  """`table` with rows `ids` (sorted, distinct) set to `rows`; padded (out-of-range) ids are dropped."""
  return table.at[ids].set(rows, mode="drop", indices_are_sorted=True, unique_indices=True)


def lazy_adam_init(table: jax.Array) -> dict[str, jax.Array]:
  """Zero moments mu, nu (N, D) float32 and the global step count (int32 scalar)."""
  return {"mu": jnp.zeros_like(table), "nu": jnp.zeros_like(table), "count": jnp.zeros((), jnp.int32)}


def lazy_adam_rows(rows: jax.Array, state: dict, ids: jax.Array, grads: jax.Array, *, learning_rate: float,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> tuple[jax.Array, dict]:
  """One lazy Adam step of the gathered rows `rows` = W[ids] (TF LazyAdamOptimizer / torch SparseAdam;
  optax.adam's formula).

  For each touched row r, with t the global step count after this step:
    mu_r = b1 mu_r + (1 - b1) g_r;  nu_r = b2 nu_r + (1 - b2) g_r^2;
    w_r -= lr * (mu_r / (1 - b1^t)) / (sqrt(nu_r / (1 - b2^t)) + eps).
  The moments of rows not in `ids` are left exactly as they were.

  Args:
    rows: (U, D) float32 W[ids] (`gather_rows`).
    state: `lazy_adam_init`'s dict.
    ids: (U,) int32 sorted distinct row ids from `unique_rows` (padding: >= N).
    grads: (U, D) float32 dL/dW[ids] (zero for padding).
    learning_rate, b1, b2, eps: Adam's hyperparameters (optax's defaults).

  Returns:
    (the updated rows (U, D), not yet written to the table; the state after the step).
  """
  count = jnp.where(state["count"] < jnp.iinfo(jnp.int32).max, state["count"] + 1, state["count"])
  mu = (1 - b1) * grads + b1 * gather_rows(state["mu"], ids)
  nu = (1 - b2) * grads ** 2 + b2 * gather_rows(state["nu"], ids)
  mu_hat = mu / (1 - b1 ** count).astype(mu.dtype)
  nu_hat = nu / (1 - b2 ** count).astype(nu.dtype)
  rows = rows + -learning_rate * (mu_hat / (jnp.sqrt(nu_hat) + eps))
  return rows, {"mu": scatter_rows(state["mu"], ids, mu), "nu": scatter_rows(state["nu"], ids, nu), "count": count}


def lazy_adam_update(table: jax.Array, state: dict, ids: jax.Array, grads: jax.Array, *, learning_rate: float,
                     b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     project: Callable[[jax.Array], jax.Array] | None = None) -> tuple[jax.Array, dict]:
  """One lazy Adam step on rows `ids` of `table` (`lazy_adam_rows`, then written back).

  Args:
    table: (N, D) float32 W.
    state, ids, grads, learning_rate, b1, b2, eps: as `lazy_adam_rows`.
    project: optional map applied to the updated rows (U, D) before they are written (ALPT's write-back).

  Returns:
    (table, state) after the step; every write touches only rows `ids`.
  """
  rows, state = lazy_adam_rows(gather_rows(table, ids), state, ids, grads, learning_rate=learning_rate, b1=b1,
                               b2=b2, eps=eps)
  return scatter_rows(table, ids, rows if project is None else project(rows)), state


def rowwise_adagrad_init(table: jax.Array) -> dict[str, jax.Array]:
  """A zero accumulator per row, (N,) float32."""
  return {"accumulator": jnp.zeros(table.shape[:1], table.dtype)}


def rowwise_adagrad_rows(rows: jax.Array, state: dict, ids: jax.Array, grads: jax.Array, *,
                         learning_rate: float, eps: float = 1e-8) -> tuple[jax.Array, dict]:
  """One row-wise Adagrad step of the gathered rows `rows` = W[ids] (FBGEMM / torchrec EXACT_ROWWISE_ADAGRAD).

  For each touched row r: G_r += mean_d g_rd^2;  w_r -= lr * g_r / (sqrt(G_r) + eps). Other rows' accumulators
  unchanged.

  Args:
    rows: (U, D) float32 W[ids] (`gather_rows`).
    state: `rowwise_adagrad_init`'s dict.
    ids: (U,) int32 sorted distinct row ids from `unique_rows` (padding: >= N).
    grads: (U, D) float32 dL/dW[ids] (zero for padding).
    learning_rate, eps: the step size and the denominator's floor (FBGEMM's default 1e-8).

  Returns:
    (the updated rows (U, D), not yet written to the table; the state after the step).
  """
  acc = gather_rows(state["accumulator"], ids) + jnp.mean(jnp.square(grads), axis=-1)
  rows = rows - learning_rate * grads / (jnp.sqrt(acc)[:, None] + eps)
  return rows, {"accumulator": scatter_rows(state["accumulator"], ids, acc)}


def rowwise_adagrad_update(table: jax.Array, state: dict, ids: jax.Array, grads: jax.Array, *,
                           learning_rate: float, eps: float = 1e-8,
                           project: Callable[[jax.Array], jax.Array] | None = None) -> tuple[jax.Array, dict]:
  """One row-wise Adagrad step on rows `ids` of `table` (`rowwise_adagrad_rows`, then written back).

  Args:
    table: (N, D) float32 W.
    state, ids, grads, learning_rate, eps: as `rowwise_adagrad_rows`.
    project: optional map applied to the updated rows (U, D) before they are written.

  Returns:
    (table, state) after the step.
  """
  rows, state = rowwise_adagrad_rows(gather_rows(table, ids), state, ids, grads, learning_rate=learning_rate,
                                     eps=eps)
  return scatter_rows(table, ids, rows if project is None else project(rows)), state


class TableOptimizer(NamedTuple):
  """A sparse table optimizer with its hyperparameters bound: `init(table) -> state` and `step_rows(rows, state,
  ids, grads) -> (rows, state)`, the updated rows not yet written (the trainer writes them back, after ALPT's
  step size has learnt from them)."""

  init: Callable[[jax.Array], Any]
  step_rows: Callable[..., tuple[jax.Array, Any]]


def table_optimizer(name: str, learning_rate: float) -> TableOptimizer | None:
  """The sparse optimizer called `name`, or None for 'dense_adam' (see `TABLE_OPTIMIZERS`)."""
  if name == "dense_adam":
    return None
  init, step_rows = {"lazy_adam": (lazy_adam_init, lazy_adam_rows),
                     "rowwise_adagrad": (rowwise_adagrad_init, rowwise_adagrad_rows)}[name]
  return TableOptimizer(init, functools.partial(step_rows, learning_rate=learning_rate))
