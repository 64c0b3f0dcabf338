"""Evaluation: metrics from logits, the plots stages write, and the model card."""
