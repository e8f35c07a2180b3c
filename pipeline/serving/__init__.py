"""Using a trained model on new files: read like the training images, top-k classes, MC-dropout uncertainty."""
