"""Models: the embedded tiny Qwen2 and its character tokenizer (``oarl.models.tiny``), its cached
supervised warm start on the arithmetic task (``oarl.models.warmstart``), and model loading (``oarl.models.loading``,
over ``directory``, ``smollm2`` and ``tokenizers``)."""
