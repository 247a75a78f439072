"""Model families (Flax NNX) and their typed config."""

from lm_research.models.config import ModelConfig
from lm_research.models.transformer import (Decoder, Encoder, EncoderDecoder, ModelOutput,
                                            build_model)

__all__ = ["ModelConfig", "Encoder", "Decoder", "EncoderDecoder", "ModelOutput", "build_model"]
