"""Fine-tuning tasks: examples, set-up from a pretrained body, evaluation with task metrics."""
