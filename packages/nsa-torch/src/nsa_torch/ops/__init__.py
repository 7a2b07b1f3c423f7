"""Vectorised eager ops, one module per stage, named like `nsa_spec.reference`.

Internal layout: queries [B, C, H, G, dk] (a chunk of C query positions, G query heads per
key/value head), keys and values [B, H, S, d] head-major, selection blocks [B, H, n_blocks, l', d].
Math runs in float32 for half-precision inputs and in float64 for float64 inputs.
"""
