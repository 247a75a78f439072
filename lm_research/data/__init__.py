"""Data: tokenizers, TFDS sources (catalog or local files), the Grain pipeline and packing.

tokenizer.py  one Tokenizer interface over SentencePiece and Hugging Face tokenizers
formats.py    readers and validators for the local file formats of docs/design.md
local_builder.py  the TFDS builder that turns local files into ArrayRecord splits
sources.py    ``open_source(data_cfg, split, workdir)``: a random-access source Grain can read
"""
