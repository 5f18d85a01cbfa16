"""The LightGCN PyTorch reference training step, for side-by-side timing (run with a Python that has torch).

Mirrors the reference implementation (gusye1234/LightGCN-PyTorch, `model.LightGCN` and `utils.BPRLoss`):
a coalesced sparse D^-1/2 A D^-1/2 over users + items, `torch.sparse.mm` per layer, mean over layers 0..K,
BPR softplus loss plus `decay * 0.5 * |e0|^2 / batch` on the batch's layer-0 rows, Adam. Only numpy and torch
are needed, so it runs in a separate interpreter; it prints one JSON line with the median step time.

  python lightgcn_torch.py --train=../shared/data/gowalla/train.txt --batch_size=2048 --steps=20
  python lightgcn_torch.py --train=... --device=cuda   # the reference on a GPU (what bench_epoch compares on one)
"""

import argparse
import json
import time

import numpy as np
import torch


def load_pairs(path):
  users, items = [], []
  with open(path) as f:
    for line in f:
      t = line.split()
      if len(t) > 1:
        users += [int(t[0])] * (len(t) - 1)
        items += [int(x) for x in t[1:]]
  return np.asarray(users), np.asarray(items)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--train", required=True)
  p.add_argument("--batch_size", type=int, default=2048)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--layers", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--device", default="cpu", help="torch device: cpu, or cuda for the reference on a GPU")
  args = p.parse_args()
  dev = torch.device(args.device)
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  users, items = load_pairs(args.train)
  num_users, num_items = users.max() + 1, items.max() + 1
  n = num_users + num_items
  rows = np.concatenate([users, items + num_users])
  cols = np.concatenate([items + num_users, users])
  deg = np.bincount(rows, minlength=n).astype(np.float64)
  vals = 1.0 / np.sqrt(deg[rows] * deg[cols])
  graph = torch.sparse_coo_tensor(torch.tensor(np.stack([rows, cols])), torch.tensor(vals, dtype=torch.float32),
                                  (n, n)).coalesce().to(dev)
  user_emb = torch.nn.Embedding(num_users, args.dim, device=dev)
  item_emb = torch.nn.Embedding(num_items, args.dim, device=dev)
  torch.nn.init.normal_(user_emb.weight, std=0.1)
  torch.nn.init.normal_(item_emb.weight, std=0.1)
  opt = torch.optim.Adam(list(user_emb.parameters()) + list(item_emb.parameters()), lr=1e-3)
  rng = np.random.default_rng(0)

  def step():
    u = torch.tensor(rng.integers(0, num_users, args.batch_size), device=dev)
    pos = torch.tensor(rng.integers(0, num_items, args.batch_size), device=dev)
    neg = torch.tensor(rng.integers(0, num_items, args.batch_size), device=dev)
    all_emb = torch.cat([user_emb.weight, item_emb.weight])
    embs = [all_emb]
    for _ in range(args.layers):
      all_emb = torch.sparse.mm(graph, all_emb)
      embs.append(all_emb)
    light_out = torch.mean(torch.stack(embs, dim=1), dim=1)
    all_users, all_items = torch.split(light_out, [num_users, num_items])
    eu, ep, en = all_users[u], all_items[pos], all_items[neg]
    reg = 0.5 * (user_emb(u).norm(2).pow(2) + item_emb(pos).norm(2).pow(2) + item_emb(neg).norm(2).pow(2))
    loss = torch.mean(torch.nn.functional.softplus((eu * en).sum(1) - (eu * ep).sum(1))) + 1e-4 * reg / len(u)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()  # a host read: the step has finished on any device

  for _ in range(args.warmup):
    step()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  steps_per_epoch = -(-len(users) // args.batch_size)
  # Runs in the peer's own Python (no hq_jax): strict JSON by hand (hq_jax.strict_json is the rule elsewhere).
  report = {"peer": "lightgcn-pytorch", "torch": torch.__version__, "device": str(dev), "median_step_s": float(np.median(times)),
            "steps_per_epoch": steps_per_epoch,
            "epoch_s_estimate": float(np.median(times)) * steps_per_epoch}
  print(json.dumps(report, allow_nan=False))


if __name__ == "__main__":
  main()
