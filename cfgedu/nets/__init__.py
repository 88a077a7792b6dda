"""Networks that satisfy the eps_model contract `model(z, lam, c) -> eps`: the toy MLPs, the ADM U-Net, their
conditioning embeddings, and the registry that saves and rebuilds them (registry.py)."""
