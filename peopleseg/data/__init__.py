"""Reading images and masks; datasets arrive with the training issue."""
