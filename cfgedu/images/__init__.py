"""Image models at work: class-conditional CFG sampling in batches, and the FID/IS/accuracy evaluation with two
protocols (a digits CNN, the Inception network of the paper's Table 1)."""
