"""Defaults shared by every experiment; each config file starts from ``base.get_base()``.

Every field is documented here once. Stable keys (docs/design.md, "Stable config keys"):
seed, train.steps, train.batch_size, train.learning_rate, eval.every_steps,
checkpoint.every_steps, mesh.data, mesh.fsdp, mesh.tensor, data.train_path, data.eval_path,
init_from.
"""

import dataclasses

import ml_collections

from lm_research.models.config import ModelConfig


def model_block(**fields) -> ml_collections.ConfigDict:
  """A ``config.model`` block holding every ModelConfig field (so each can be overridden)."""
  defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)
              if f.default is not dataclasses.MISSING}
  return ml_collections.ConfigDict(dict(defaults, **fields))


def train_on_bundled_corpus(c: ml_collections.ConfigDict, batch_size: int) -> None:
  """The tiny configs' recipe: the bundled Shakespeare corpus, 600 steps of 128 tokens."""
  c.data.source = "files"  # the tokenizer is trained on these files on first use
  c.data.train_path = "data/shakespeare/train"
  c.data.eval_path = "data/shakespeare/eval"
  c.train.seq_len = 128
  c.train.batch_size = batch_size
  c.train.steps = 600
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 30
  c.eval.every_steps = 200
  c.eval.steps = 16  # the same held-out batches at every evaluation
  c.checkpoint.every_steps = 300
  c.train.log_every_steps = 50


# The tiny pretrained bodies the fine-tuning configs start from: workdir and config module.
BODIES = {"encoder": ("runs/bert_tiny", "bert_tiny"), "decoder": ("runs/gpt_tiny", "gpt_tiny"),
          "encoder_decoder": ("runs/t5_tiny", "t5_tiny")}


def finetune(objective: str, kind: str, body: str, train_path: str,
             eval_path: str) -> ml_collections.ConfigDict:
  """The fine-tuning configs' recipe: a tiny pretrained body (init_from; its config's model
  block is used as is only when init_from is ''), task data, 3 epochs at an automatic rate,
  evaluation of the whole eval set."""
  import importlib  # noqa: PLC0415  (the body configs import this module)
  c = get_base()
  c.objective = objective
  c.init_from, module = BODIES[body]
  c.model = importlib.import_module(f"configs.{module}").get_config().model
  c.data.source = "files"
  c.data.kind = kind
  c.data.train_path = train_path
  c.data.eval_path = eval_path
  c.train.seq_len = 128
  c.train.batch_size = 32
  c.train.steps = 0  # 0: from train.epochs; --config.train.steps=N wins over epochs
  c.train.epochs = 3.0  # train.steps follows from the training set's size
  c.train.learning_rate = 0.0  # auto: 3e-4 for the tiny bodies, 5e-5 for BERT-base
  c.train.warmup_ratio = 0.1
  c.train.log_every_steps = 20
  c.eval.every_steps = 200
  c.eval.steps = 0  # the whole eval set
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 1
  return c


def get_base() -> ml_collections.ConfigDict:
  """The default experiment: every section and field, before a config file specialises it."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameters, dropout, data order and masking all derive from it
  c.objective = "causal_lm"  # 'mlm_nsp' | 'causal_lm' | 'span_corruption'
  c.init_from = ""  # a native checkpoint dir or a Hugging Face folder to start from

  c.model = model_block(family="decoder", vocab_size=256, d_model=64, num_layers=2,
                        num_heads=2, d_ff=256)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100
  c.train.batch_size = 8  # global batch (all devices, all processes)
  c.train.seq_len = 128  # tokens per example (encoder input length for span corruption)
  c.train.target_len = 0  # seq2seq decoder length; 0 = span corruption's rule, or seq_len
  c.train.epochs = 0.0  # > 0 with train.steps=0: steps = ceil(epochs * examples / batch_size)
  c.train.learning_rate = 1e-3  # 0 = 3e-4 * 128 / model.d_model (tasks/setup.py)
  c.train.optimizer = "adamw"  # 'adamw' | 'adafactor'
  # decay after warmup: 'linear' | 'cosine' | 'inverse_sqrt' | 'constant'
  c.train.schedule = "linear"
  c.train.warmup_steps = 10
  c.train.warmup_ratio = 0.0  # > 0: warmup_steps = ratio * train.steps (fine-tuning recipes)
  c.train.weight_decay = 0.01  # not applied to biases, norms
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-8
  c.train.grad_clip = 1.0  # global-norm clipping; 0 disables
  c.train.ema_decay = 0.0  # > 0: evaluate and predict with a moving average of the weights
  c.train.grad_accum_steps = 1  # microbatches per update (batch_size must divide by it)
  c.train.z_loss = 0.0  # weight of log(Z)^2, stabilises decoder logits
  c.train.on_nan = "stop"  # 'stop' the run, or 'skip' the update, on a NaN/Inf loss
  c.train.log_every_steps = 10
  # LoRA: low-rank adapters on the chosen projections; only they (and a new task head) train
  # and have optimizer state (models/lora.py); hf.save merges them into the weights
  c.train.lora = ml_collections.ConfigDict()
  c.train.lora.rank = 0  # adapter rank; 0 = off (every parameter trains)
  c.train.lora.alpha = 16.0  # the update is scaled by alpha / rank
  c.train.lora.dropout = 0.0  # dropout on the adapters' input
  # comma-separated: q, k, v, o (attention), gate, wi, wo (MLP), or 'attention', 'mlp', 'all'
  c.train.lora.targets = "q,k,v,o"
  c.train.lora.base_dtype = ""  # '' = model.param_dtype; 'bfloat16' stores the frozen base in bf16

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 50  # 0 disables periodic evaluation
  c.eval.steps = 4  # batches per evaluation (the same held-out batches); 0 = the whole eval set
  # Generation metrics (exact match, BLEU, ROUGE-L) of seq2seq / prompt-response runs decode
  # this many tokens greedily per eval example; 0 = only the loss
  c.eval.max_new_tokens = 32

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 100  # 0 saves only at the end
  c.checkpoint.keep = 3

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = every device not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Several TPU slices (multislice): slices along data / fsdp over the data-center network;
  # their product must equal the slice count, and data/fsdp/tensor above are then per slice.
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1

  c.data = ml_collections.ConfigDict()
  # 'synthetic' (seeded random tokens), 'files' (data.train_path/eval_path in the local formats
  # of docs/design.md, e.g. the bundled data/shakespeare/train) or a TFDS catalog name ('lm1b',
  # 'glue/sst2', 'conll2003', 'wmt14_translate/de-en'; prepared as ArrayRecord in data.data_dir)
  c.data.source = "synthetic"
  c.data.kind = ""  # 'text'|'classification'|'tagging'|'seq2seq'; '' = the catalog's, else text
  c.data.train_path = ""  # a file, folder, glob, or several joined by commas
  c.data.eval_path = ""  # '' = hold out every 20th document/example of train_path (logged)
  c.data.data_dir = ""  # TFDS data dir; '' = WORKDIR/tfds for files, TFDS's default for catalog
  c.data.train_split = ""  # catalog split names; '' = 'train'
  c.data.eval_split = ""  # '' = the catalog table's (validation, test, validation_matched...)
  # An eval label/tag the training data never shows: 'error' (stop, say which), or
  # 'count_wrong' (tagging: score those words as errors; the model cannot predict them)
  c.data.unseen_eval_labels = "error"
  # A classification text longer than train.seq_len keeps its 'head', or (single texts)
  # 'head_tail': the first quarter and last three quarters of the tokens (Sun et al. 2019), or
  # 'windows': all of it, as several overlapping rows whose predictions are averaged
  c.data.truncation = "head"
  c.data.fields = ""  # catalog features → ours, 'text=sentence,label=label'; '' = known table
  # .model, tokenizer.json, vocab.txt or a folder holding one; '' = WORKDIR/tokenizer.model,
  # trained on the training texts (model.vocab_size pieces at most) when it does not exist
  c.data.tokenizer_path = ""
  c.data.tokenizer_type = "unigram"  # SentencePiece algorithm when training: 'unigram' | 'bpe'
  # Share of the text's characters kept as pieces (0.98-1); the rarest fall back to bytes. Lowered
  # automatically, and logged, when those characters would not fit model.vocab_size (Chinese)
  c.data.character_coverage = 0.9995
  # Grain worker processes per data shard (0 = threads only); -1 = 0 on CPU, else one per 4 host
  # cores, at most 16 a process (lm_research/data/pipeline_bench.py measures a host's scaling)
  c.data.worker_count = -1
  # Disjoint data streams per global batch; 0 = gcd(batch_size, 8). Runs whose process count
  # divides it see identical batches (a 2-process run matches a 1-process one).
  c.data.num_shards = 0
  # Fine-tuning: rows built once, batches of similar length cut to this many bucket lengths
  # (those that pad the rows least) or train.seq_len, so steps skip most padding, each bucket
  # compiling once; 0 = every row padded to train.seq_len, streamed (no rows held in memory)
  c.data.length_buckets = 4
  # Fine-tuning on short texts: several training examples per row, attention kept inside each
  # (data/example_packing.py); train.batch_size then counts rows. Needs data.length_buckets > 0
  c.data.pack_examples = False

  # Tracking: W&B (online, offline or off) and TensorBoard, beside metrics.jsonl (always).
  c.wandb = ml_collections.ConfigDict()
  # 'online' | 'offline' | 'disabled'; '' = $WANDB_MODE if set, else online when WANDB_API_KEY
  # is set and offline (no network needed; `wandb sync WORKDIR/wandb/offline-run-*` later) when not
  c.wandb.mode = ""
  c.wandb.project = "lm_research"
  c.wandb.entity = ""  # '' = the API key's default entity
  c.wandb.name = ""  # run name; '' = the workdir's folder name
  c.wandb.group = ""  # runs of one sweep share a group (launch/sweep.py sets it)
  c.wandb.tags = ""  # comma-separated, e.g. 'ablation,lr'
  c.wandb.notes = ""
  c.wandb.dir = ""  # where W&B writes its files; '' = WORKDIR (so WORKDIR/wandb/)
  c.wandb.system_metrics = True  # sample CPU/GPU/TPU utilisation into the run
  c.wandb.init_timeout = 20.0  # seconds an online start may wait for W&B before going offline

  c.tensorboard = ml_collections.ConfigDict()
  c.tensorboard.enabled = False  # event files for `tensorboard --logdir`
  c.tensorboard.dir = ""  # '' = WORKDIR/tensorboard

  # --mode=predict: FILE in (plain lines, .tsv with a header, or .jsonl) -> one JSON line out
  c.predict = ml_collections.ConfigDict()
  c.predict.input = ""
  c.predict.output = ""  # '' = WORKDIR/predictions.jsonl
  c.predict.batch_size = 32
  c.predict.max_new_tokens = 64  # generation: decoding options (lm_research/decoding.py)
  c.predict.strategy = "greedy"  # 'greedy' | 'sample' | 'beam'
  c.predict.temperature = 1.0
  c.predict.top_k = 0  # 0 = off
  c.predict.top_p = 1.0  # 1.0 = off
  c.predict.num_beams = 4
  c.predict.length_penalty = 1.0

  # A jax.profiler trace of steps [start_step, start_step + num_steps) into WORKDIR/profile/
  # (open with TensorBoard's profile plugin or Perfetto); process 0 only.
  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 5  # skip the compiling first steps
  c.profile.num_steps = 0  # 0 = no trace
  return c
