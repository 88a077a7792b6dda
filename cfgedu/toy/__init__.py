"""The exact 2D world: the three-Gaussian mixture with closed-form scores at every noise level, densities on a grid,
Figure 2, the curl and Helmholtz–Hodge split of CFG fields, the ideal tilted sampler, MALA correctors, 2D metrics
and the guidance trade-off sweep. Models come in as eps_models; nothing here trains or draws."""
