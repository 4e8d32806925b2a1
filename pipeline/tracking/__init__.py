"""Recording runs in MLflow: the run writer (a helper process) and the Model Registry."""
