"""Language-model backbones: builders from size presets or local directories (:mod:`.builders`),
the offline tokenizer (:mod:`.tokenization`) and parameter-efficient tuning (:mod:`.tuning`)."""
