"""Bridges to other ecosystems: ``hf`` loads and saves Hugging Face BERT, GPT-2 and T5 folders."""
