"""Running a checked recipe: runner, stage cache, accuracy budget, layer plan, summary, pre-flight checks, interrupts, quiet output."""
