"""Recipes shipped with promptrec: run configs that ``--config NAME`` finds by name."""
