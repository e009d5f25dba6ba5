"""Data: reading images and masks, folder/COCO/WebDataset datasets, augmentation and dataset checks."""
