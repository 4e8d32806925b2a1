"""The recipe's configuration: schemas of the top-level keys, the checked recipe, objectives, command-line arguments and Hydra callbacks."""
