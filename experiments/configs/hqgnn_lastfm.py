"""LightGCN / HQ-GNN on the embedded LastFM data (the `make run` job).

Command:
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_lastfm.py --workdir=runs/lastfm_fp
Quantized (issue HQ-GNN):
  ... --config.quant.bits=1 --config.quant.estimator=gste

Expected (full precision, d=64, K=3, 200 epochs, seed 0, 2-core CPU, measured 2026-11-23): Recall@20
0.2493, NDCG@20 0.1873, Recall@50 0.3973, NDCG@50 0.2383 in about 1 minute (0.3 s/epoch); 600 epochs
reach Recall@20 0.2703. Quantized rows (3 seeds): results/hqgnn.md (e.g. 4 bit GSTE Recall@20 0.2460).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data_dir = "lastfm"  # a LightGCN text folder, or "lastfm" for the embedded dataset
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.dim = 64
  config.model.num_layers = 3
  config.model.init_std = 0.1
  config.model.aggregation = "csr"  # "csr" (fast sparse kernel) or "segment" (jraph message passing)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 200
  config.train.batch_size = 2048
  config.train.learning_rate = 1e-3
  config.train.lr_schedule = "constant"  # or "cosine": decays the encoder's lr to 0 over train.epochs
  config.train.warmup_epochs = 0  # cosine only: linear warm-up from 0 over this many epochs, then the decay
  config.train.decay = 1e-4
  config.train.log_every = 10
  config.train.checkpoint_every = 10
  config.train.stop_after_epochs = 0  # > 0: stop at the first checkpoint at or after it (simulated interruption)
  # Workdir of a trained run: start the encoder from its latest checkpoint. Batches are drawn from
  # (seed, epoch), so with the source's seed the first epochs replay its triples; change `seed` to avoid it.
  config.train.init_from = ""
  # > 0: first train full precision for this many epochs in <workdir>/pretrain, then start from it (and use
  # it as the distillation teacher): one command from scratch (ours).
  config.train.pretrain_epochs = 0

  # Quantizer of the final user and item embeddings (HQ-GNN). bits = none is plain LightGCN.
  config.quant = ml_collections.ConfigDict()
  config.quant.bits = "none"  # none, 1, 2, 3, 4 or 8
  config.quant.estimator = "gste"  # ste, gste (Hessian-aware) or gaussian (BiGeaR's derivative of sign, 1 bit)
  config.quant.codes = "final"  # final (spec: final embeddings) or layerwise (each layer E(k), BiGeaR's layout)
  config.quant.layer_weights = "mean"  # layerwise scores sum_k w_k <u_k, i_k>: mean (1/(K+1)) or bigear
  config.quant.gaussian_a = 1.0  # gaussian estimator: BiGeaR's norm_a
  config.quant.delta = "trace"  # GSTE delta: trace (spec: Hutchinson Tr(H)/N), diagonal (ours), fixed
  config.quant.delta_multiplier = 1.0  # trace / diagonal: delta = this * the rule's delta (sweeps)
  config.quant.fixed_delta = 1e-3  # delta of the fixed mode
  config.quant.delta_every = 10  # T: recompute delta every T epochs (it starts at 0)
  config.quant.delta_batches = 3  # mini-batches averaged per recomputation
  config.quant.hutchinson_max_samples = 50
  config.quant.hutchinson_rtol = 1e-3
  config.quant.range_learning_rate = 1e-3  # Adam lr of the learnable range / 1-bit scale (spec: 1e-5..1e-3)
  config.quant.one_bit_scale = "matrix"  # matrix or row (BiGeaR-style per-row scale)
  config.quant.scale_bits = 32  # row scales stored as float32 (32) or 8-bit codes (8)
  # 1-bit final codes: store users without scales (a user's scale cannot change that user's ranking, ours)
  config.quant.drop_user_scales = False
  # itq: rotate the trained start (init_from / pretrain_epochs) by ITQ's rotation before quantizing (ours)
  config.quant.rotation = "none"
  config.quant.itq_iterations = 50
  config.quant.init_num_std = 3.0  # initial range: mean -+ this many std of the initial embeddings
  # Quantizer family: scalar (the keys above) or pq: product codes of the final embeddings (issue 22, ours):
  # M subspaces of d / M dims, 2^b codewords each, M * b code bits per node; codebooks start from a k-means
  # (seeded by `seed`) of the initial or init_from / pretrained embeddings. Estimator ste or gste.
  config.quant.kind = "scalar"
  config.quant.pq_subspaces = 8  # M (divides model.dim)
  config.quant.pq_bits = 8  # b <= 8
  config.quant.pq_codebooks = "separate"  # shared (one set for users and items) or separate (one per side)
  # both (users and items coded) or items (items coded, users float: FAISS's asymmetric "items" layout)
  config.quant.pq_sides = "both"
  config.quant.pq_update = "gradient"  # gradient (Adam on dL/dC) or ema (VQ-VAE's EMA k-means, arXiv 1711.00937)
  config.quant.pq_learning_rate = 1e-3  # gradient: Adam lr of the codebooks
  config.quant.pq_ema_decay = 0.99  # ema: decay of the moving averages per step
  config.quant.pq_kmeans_iterations = 25  # Lloyd iterations of the initial k-means
  # opq: rotate the trained start (init_from / pretrain_epochs) by OPQ's rotation (Ge et al., CVPR 2013)
  config.quant.pq_rotation = "none"
  config.quant.pq_opq_iterations = 20  # opq: alternations of Procrustes rotation and Lloyd steps

  # Ranking distillation from the train.init_from model's top-R items (ours, after BiGeaR). weight 0 = off.
  config.distill = ml_collections.ConfigDict()
  config.distill.weight = 0.0
  config.distill.top_r = 100  # R: the teacher's top-R non-training items per user
  config.distill.decay = 0.1  # rank r is drawn with probability proportional to exp(-decay * (r + 1))
  config.distill.samples = 4  # teacher items per BPR row and step

  # Device mesh (hq_jax.parallel): batches over `data`, E0 and A~ by node rows over `model` x `data`; the
  # product is the number of devices. row_multiple pads E0 to a multiple of it (0: of the device count); a
  # fixed one (e.g. 64) lets a checkpoint move between mesh shapes whose row blocks divide it.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = 1
  config.mesh.model = 1
  config.mesh.row_multiple = 0

  config.eval = ml_collections.ConfigDict()
  config.eval.ks = (20, 50)
  config.eval.every = 50  # epochs between evaluations written to metrics.jsonl; 0 = only at the end
  config.eval.batch_size = 1024
  # "test": train on train.txt, evaluate on test.txt. "valid": train on train.txt minus a validation split
  # (valid_fraction of each user's training items, drawn from valid_seed) and evaluate on it: choose settings
  # with this, then report "test" once.
  config.eval.split = "test"
  config.eval.valid_fraction = 0.1
  config.eval.valid_seed = 0
  return config
