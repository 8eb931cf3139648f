"""Scripts prepared for a lent GPU machine (they need CUDA for their real run; each has a CPU smoke path)."""
