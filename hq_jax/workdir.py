"""Workdir conventions shared by the trainers: results.json, metrics.jsonl, device and time stamps."""

import datetime
import json
import os
import platform

import jax
import numpy as np


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  if hasattr(obj, "to_dict"):  # ml_collections.ConfigDict
    return _jsonable(obj.to_dict())
  return obj


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented JSON atomically (temporary file, then rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(_jsonable(obj), f, indent=2, sort_keys=False)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class MetricsLog:
  """An append-only JSON-lines log, one evaluation per line, each with a `step` key."""

  def __init__(self, path: str):
    self.path = path

  def append(self, record: dict) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(_jsonable(record)) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]

  def truncate_after(self, step: int) -> None:
    """Drops records with `step` > `step` (written after the checkpoint a resumed run starts from)."""
    kept = [r for r in self.read() if r.get("step", 0) <= step]
    tmp = f"{self.path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for r in kept:
        f.write(json.dumps(r) + "\n")
    os.replace(tmp, self.path)


def device_description() -> str:
  """E.g. 'cpu x1 (x86_64, 2 cores)' or 'gpu x1 (NVIDIA H100 80GB HBM3)'."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  platform_name = devices[0].platform
  if platform_name == "cpu":
    return f"cpu x{len(devices)} ({platform.machine()}, {os.cpu_count()} cores)"
  return f"{platform_name} x{len(devices)} ({', '.join(kinds)})"


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
