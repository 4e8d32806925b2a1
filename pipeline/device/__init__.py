"""Where training runs: the device schema, its resolution to a tf.distribute strategy, device probing and mixed precision."""
