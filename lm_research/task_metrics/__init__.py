"""Task metrics in plain Python/numpy: classification (accuracy, macro P/R/F1, confusion matrix),
tagging (token accuracy, seqeval-style entity P/R/F1) and generation (exact match, BLEU,
ROUGE-L)."""

from lm_research.task_metrics.classification import (classification_scores, confusion_matrix,
                                                     save_confusion_matrix)
from lm_research.task_metrics.generation import bleu, exact_match, generation_scores, rouge_l
from lm_research.task_metrics.tagging import (entity_scores, get_entities, is_entity_tagging,
                                              tag_scores, token_accuracy)

__all__ = ["classification_scores", "confusion_matrix", "save_confusion_matrix", "bleu",
           "exact_match", "generation_scores", "rouge_l", "entity_scores", "get_entities",
           "is_entity_tagging", "tag_scores", "token_accuracy"]
