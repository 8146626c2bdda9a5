"""Prompts: templates as data (:mod:`.templates`, the built-in ``p5.yaml``) and the task families
that turn a user's training history into template fields (:mod:`.tasks`)."""
