"""TensorFlow, TFMOT and LiteRT code for each optimization technique, usable without the stage contract.

The stage plugins in `stages/` are thin shells around these modules: they read their parameters and
the stage context and pass on what a technique needs (data, device, log, folder, seed) as plain
arguments. Nothing here imports the stage contract, the runner or a stage.
"""
