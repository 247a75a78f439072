"""Data: tokenizers, TFDS sources (catalog or local files), the Grain pipeline and packing.

tokenizer.py           one Tokenizer interface over SentencePiece and Hugging Face tokenizers
tokenizer_training.py  SentencePiece training (char_coverage.py fits the characters), load-or-train
chat_template.py       a Hugging Face folder's chat template (as transformers renders it), its EOS
                       ids, and conversations (messages) checked
formats.py             the record kinds (RecordKind) and readers of the local file formats
units.py, word_segmenter.py  tagging units and whole words for scripts written without spaces
local_builder.py       the TFDS builder that turns local files into ArrayRecord splits
sources.py             ``open_source(data_cfg, split, workdir)``: a random-access source
inputs.py              the trainer's view: each split opened once (DataSources), host batches
pipeline.py, packing.py  the Grain pipeline; synthetic.py  random batches of each format
"""
