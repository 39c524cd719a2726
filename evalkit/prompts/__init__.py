"""Prompts as the model reads them: templates (raw, fixed, the model's own chat template)
and token counters (the model's tokenizer, or a named one such as mistral-v1)."""
