"""Our train step vs ``transformers`` + PyTorch eager, same shapes, same process.

  python -m bench.compare_torch --config=configs/gpt2_small.py --batch_size=4 --seq_len=512 \
      --steps=5
  python -m bench.compare_torch --config=configs/bert_base.py --batch_size=8 --seq_len=128 --steps=5

BERT runs ``BertForPreTraining`` with the MLM + NSP loss, GPT-2 ``GPT2LMHeadModel`` with the
causal LM loss; both with AdamW, f32, dropout where ours has it (not on attention
probabilities). Prints both tokens/s and ours / theirs.
PyTorch and transformers are optional extras (requirements-test.txt).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
_BATCH = flags.DEFINE_integer("batch_size", 8, "batch size")
_SEQ = flags.DEFINE_integer("seq_len", 128, "tokens per example")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per framework (median reported)")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps first")


def torch_model_and_batch(cfg, batch_size: int, seq_len: int):
  """The transformers model matching our config, and a random batch with its labels."""
  import torch  # noqa: PLC0415  (optional: requirements-test.txt)
  import transformers  # noqa: PLC0415

  m = cfg.model
  # Dropout where our models have it (embeddings, residual branches); none on the attention
  # probabilities, which our attention (models/softmax_attention.py) does not drop out.
  gen = torch.Generator().manual_seed(0)
  ids = torch.randint(0, m.vocab_size, (batch_size, seq_len), generator=gen)
  if m.family == "encoder":
    hf_cfg = transformers.BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, intermediate_size=m.d_ff,
        max_position_embeddings=m.max_len, type_vocab_size=m.type_vocab_size,
        layer_norm_eps=m.norm_eps, hidden_dropout_prob=m.dropout_rate,
        attention_probs_dropout_prob=0.0, hidden_act="gelu")
    model = transformers.BertForPreTraining(hf_cfg)
    # MLM loss on 15% of positions, like our objective; the rest ignored (-100).
    mask = torch.rand((batch_size, seq_len), generator=gen) < 0.15
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                 token_type_ids=torch.zeros_like(ids),
                 labels=torch.where(mask, ids, torch.full_like(ids, -100)),
                 next_sentence_label=torch.randint(0, 2, (batch_size,), generator=gen))
  elif m.family == "decoder":
    hf_cfg = transformers.GPT2Config(
        vocab_size=m.vocab_size, n_embd=m.d_model, n_layer=m.num_layers, n_head=m.num_heads,
        n_inner=m.d_ff, n_positions=m.max_len, layer_norm_epsilon=m.norm_eps,
        resid_pdrop=m.dropout_rate, embd_pdrop=m.dropout_rate, attn_pdrop=0.0,
        activation_function="gelu_new")
    model = transformers.GPT2LMHeadModel(hf_cfg)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
  else:
    raise ValueError(f"no transformers counterpart here for model.family={m.family!r}")
  return model, batch


def run_torch(cfg, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict:
  """Times ``steps`` AdamW steps of the transformers model in eager mode."""
  import torch  # noqa: PLC0415  (optional: requirements-test.txt)

  torch.set_num_threads(os.cpu_count())
  model, batch = torch_model_and_batch(cfg, batch_size, seq_len)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate,
                          weight_decay=cfg.train.weight_decay)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    return loss.item()

  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  step_time = statistics.median(times)
  return {"step_time_s": step_time, "tokens_per_sec": batch_size * seq_len / step_time,
          "step_times_s": times, "loss": loss, "threads": torch.get_num_threads()}


def main(argv: Sequence[str]) -> None:
  """Runs ours, then PyTorch, and prints both and the ratio."""
  del argv
  try:
    import torch  # noqa: F401, PLC0415
    import transformers  # noqa: F401, PLC0415
  except ImportError as e:
    sys.exit(f"error: the comparison needs torch and transformers ({e.name} is missing): "
             "pip install -r requirements-test.txt")
  from lm_research import bench  # noqa: PLC0415  (after flag parsing)

  cfg = _CONFIG.value
  ours = bench.run_bench(cfg, batch_size=_BATCH.value, seq_len=_SEQ.value, steps=_STEPS.value,
                         warmup=_WARMUP.value)
  theirs = run_torch(cfg, _BATCH.value, _SEQ.value, _STEPS.value, _WARMUP.value)
  ratio = ours["tokens_per_sec"] / theirs["tokens_per_sec"]
  print(bench.format_table(ours))
  print(f"\n{'':<24}{'ours (JAX)':>14}{'torch eager':>14}")
  print(f"{'step time (median)':<24}{ours['step_time_s'] * 1e3:>12.0f}ms"
        f"{theirs['step_time_s'] * 1e3:>12.0f}ms")
  print(f"{'tokens/s':<24}{ours['tokens_per_sec']:>14,.0f}{theirs['tokens_per_sec']:>14,.0f}")
  print(f"{'ratio (ours / torch)':<24}{ratio:>14.2f}")
  sys.stdout.flush()
  print(json.dumps({"config": bench.config_path_flag(),
                    "batch_size": _BATCH.value, "seq_len": _SEQ.value,
                    "ours_tokens_per_sec": ours["tokens_per_sec"],
                    "torch_tokens_per_sec": theirs["tokens_per_sec"],
                    "ours_step_time_s": ours["step_time_s"],
                    "torch_step_time_s": theirs["step_time_s"], "ratio": ratio,
                    "ours_compile_time_s": ours["compile_time_s"], "mfu": ours["mfu"],
                    "peak_memory_bytes": ours["peak_memory_bytes"],
                    "hugepage_malloc": ours["hugepage_malloc"]}))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  # Both frameworks run in this process, so both get the huge-page malloc (hugepages.py).
  from lm_research import hugepages
  hugepages.reexec_with_hugepages()
  app.run(main)
