"""The base every other layer builds on: named registries (:mod:`.registry`) and the recommender
contract, its registry and its build/load functions (:mod:`.recommender`). Imports nothing above it."""
