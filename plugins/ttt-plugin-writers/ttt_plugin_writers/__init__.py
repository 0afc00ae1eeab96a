"""Memory writers whose own weights are fast weights: NeuralMemory (cross-attention) and MemoryMLP."""
