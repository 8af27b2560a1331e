"""Training jobs: LoRA fine-tuning and the process that runs any family's training for the job runner."""
