"""Training: the LightningModule every launcher uses, its config, and the local (one-process) launcher."""
