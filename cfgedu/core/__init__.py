"""The paper, for any eps_model: the log-SNR schedule, ε/x̂/score conversions, classifier-free guidance (Eq. 6),
Algorithm 1 (the loss) and Algorithm 2 (the sampler), with the small tensor, check, config and file helpers they use.
Torch only: no network, no dataset, no plotting."""
