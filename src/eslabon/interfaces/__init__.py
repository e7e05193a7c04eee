"""What people use: the CLI, the playground, batch runs, render and graph."""
