"""Built-in stage plugins, registered in the `pipeline.stages` entry-point group."""
