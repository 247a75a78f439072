"""Causal LM fine-tuning (GPT): continue training on new text, or on prompt/response pairs.

Commands (after pretraining configs/gpt_tiny.py into runs/gpt_tiny):
  python -m lm_research.main --config=configs/finetune_causal_lm.py --workdir=runs/gpt_email
      new text: the bundled SpamAssassin e-mails as documents (a domain the model never saw);
      eval/loss is the held-out e-mails' next-token cross-entropy
  python -m lm_research.main --config=configs/finetune_causal_lm.py:prompt_response \\
      --workdir=runs/gpt_pr --config.data.train_path=train.jsonl --config.data.eval_path=dev.jsonl
      JSONL lines {"prompt": ..., "response": ...} (or input/target); the loss covers the
      response only, and evaluation generates responses (exact match, BLEU, ROUGE-L)
Any body: --config.init_from=PATH/TO/gpt2 (a Hugging Face folder) or a native workdir.
"""

from configs import base


def get_config(arg: str = ""):
  """Causal LM fine-tuning; ``arg``: '' (plain text) or 'prompt_response'."""
  if arg not in ("", "prompt_response"):
    raise ValueError(f"configs/finetune_causal_lm.py:{arg} is not '' or 'prompt_response'")
  c = base.finetune("causal_lm", "seq2seq" if arg else "text", "decoder",
                    "data/spamassassin/train.jsonl", "data/spamassassin/test.jsonl")
  c.train.batch_size = 16
  c.train.epochs = 0.0
  c.train.steps = 300
  c.train.learning_rate = 5e-4
  c.eval.every_steps = 100
  c.eval.steps = 0 if arg else 16  # prompt/response: every pair; text: 16 batches
  c.eval.max_new_tokens = 32
  c.checkpoint.every_steps = 100
  return c
