"""HTTP serving of saved models: the API, the feedback store, continual updates."""
