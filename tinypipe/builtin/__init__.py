"""The built-in offline models and data sets: tiny models built from configs and files shipped in the package."""
