"""Training and evaluation: the LightningModule, the train and evaluate entry points, metrics and reports."""
