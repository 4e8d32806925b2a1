"""What the runner measures of every stage's output: metrics, multiply-accumulates and the LiteRT interpreter."""
