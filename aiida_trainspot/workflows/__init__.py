"""Work-chain building blocks shared by the stages, and the active-learning loop."""
