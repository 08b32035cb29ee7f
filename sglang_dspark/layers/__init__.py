"""Building blocks shared by the models: attention, norms, rotary embedding, sampler."""
