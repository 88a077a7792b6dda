"""The training engine: TrainConfig and the Experiment a preset names, the one training loop (Algorithm 1, EMA,
DDP, resume), run folders and their checkpoints, the process group, and the cost of a network (FLOPs, bench)."""
