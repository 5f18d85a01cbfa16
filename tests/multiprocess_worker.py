"""One process of the multi-process check (tests/multiprocess_test.py), or the single-process reference.

  # two processes on localhost, 2 CPU devices each, a 2 x 2 ('data', 'model') mesh over all four:
  python tests/multiprocess_worker.py --num_processes=2 --process_id=0 --port=PORT --local_devices=2 --out=a.json &
  python tests/multiprocess_worker.py --num_processes=2 --process_id=1 --port=PORT --local_devices=2 --out=b.json
  # the reference: the trainer's step on one device, unsharded
  python tests/multiprocess_worker.py --num_processes=1 --out=ref.json

Every process runs the same program (the toy LightGCN-BPR steps of tests/parallel_worker.py, with the state
created sharded and A~ split by node rows) and writes the losses and the gathered parameters as JSON.
"""

import argparse
import json
import time

import jax
import numpy as np


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--local_devices", type=int, default=1)
  parser.add_argument("--data", type=int, default=2, help="config.mesh.data of the distributed run")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()

  jax.config.update("jax_num_cpu_devices", args.local_devices)
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id, initialization_timeout=120)
  import parallel_worker

  from hq_jax import parallel

  t = time.perf_counter()
  data = parallel_worker.toy_data()
  if args.num_processes > 1:
    mesh = parallel.mesh_from_config(args.data, jax.device_count() // args.data)
    result = parallel_worker.train_sharded(data, mesh)
    mesh_shape = dict(mesh.shape)
  else:
    result = parallel_worker.train_reference(data)
    mesh_shape = {}
  out = {"process_id": jax.process_index(), "process_count": jax.process_count(),
         "devices": jax.device_count(), "local_devices": jax.local_device_count(), "mesh": mesh_shape,
         "losses": result["losses"], "params": [np.asarray(x).tolist() for x in jax.tree.leaves(result["params"])],
         "specs": result.get("specs", {}), "seconds": time.perf_counter() - t}
  with open(args.out, "w") as f:
    json.dump(out, f)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
