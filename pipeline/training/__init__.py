"""Training: the hot loops, optimizers and schedules, fine-tuning, and the run that keeps the best epoch."""
