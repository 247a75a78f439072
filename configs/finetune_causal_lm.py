"""Causal LM fine-tuning (GPT): continue training on new text, on prompt/response pairs, or chat.

Commands (after pretraining configs/gpt_tiny.py into runs/gpt_tiny):
  python -m lm_research.main --config=configs/finetune_causal_lm.py --workdir=runs/gpt_email
      new text: the bundled SpamAssassin e-mails as documents (a domain the model never saw);
      eval/loss is the held-out e-mails' next-token cross-entropy
  python -m lm_research.main --config=configs/finetune_causal_lm.py:prompt_response \\
      --workdir=runs/gpt_pr --config.data.train_path=train.jsonl --config.data.eval_path=dev.jsonl
      JSONL lines {"prompt": ..., "response": ...} (or input/target); the loss covers the
      response only, and evaluation generates responses (exact match, BLEU, ROUGE-L)
  python -m lm_research.main --config=configs/finetune_causal_lm.py:chat --workdir=runs/gpt_chat
      chat SFT: JSONL lines {"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}
      (default: the bundled Shakespeare quiz, data/chat), rendered with the body's chat template
      (tasks/chat_format.py; a default format for bodies without one); the loss covers the
      assistant's turns, and evaluation generates each eval conversation's last reply.
      Then --mode=predict (one reply per input line) or `python -m lm_research.chat
      --workdir=runs/gpt_chat` to talk to it. Measured on the shared 2-core CPU (2026-12-03),
      from runs/gpt_tiny: 300 steps in 5 min; eval/loss 6.11 -> 1.18 -> 0.68 -> 0.66 at steps
      0/100/200/300, eval/exact_match 0 -> 0.21 (the play 9 of 24, the speaker 1 of 24)
Any body: --config.init_from=PATH/TO/gpt2 (a Hugging Face folder) or a native workdir.
"""

from configs import base


def get_config(arg: str = ""):
  """Causal LM fine-tuning; ``arg``: '' (plain text), 'prompt_response' or 'chat'."""
  if arg not in ("", "prompt_response", "chat"):
    raise ValueError(f"configs/finetune_causal_lm.py:{arg} is not '', 'prompt_response' or 'chat'")
  if arg == "chat":
    c = base.finetune("causal_lm", "chat", "decoder", "data/chat/train.jsonl",
                      "data/chat/test.jsonl")
  else:
    c = base.finetune("causal_lm", "seq2seq" if arg else "text", "decoder",
                      "data/spamassassin/train.jsonl", "data/spamassassin/test.jsonl")
  c.train.batch_size = 16
  c.train.epochs = 0.0
  c.train.steps = 300
  c.train.learning_rate = 5e-4
  c.eval.every_steps = 100
  c.eval.steps = 0 if arg else 16  # pairs and conversations: all of them; text: 16 batches
  c.eval.max_new_tokens = 32
  c.checkpoint.every_steps = 100
  return c
