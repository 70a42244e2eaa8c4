"""Golden images: recipes, builds, cache, and agent install/verify/rollback."""
