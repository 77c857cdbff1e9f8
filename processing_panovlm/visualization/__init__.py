"""Pictures of what the model sees: each view's footprint on the panorama, with the view tiles."""
