"""Adapters from other libraries' models to NSA (`nsa_torch.integrations.transformers`)."""
