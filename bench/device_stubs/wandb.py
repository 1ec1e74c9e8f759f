"""Import-only stand-in (the GPU check never logs to wandb)."""
