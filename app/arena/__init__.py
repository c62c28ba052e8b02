"""The review arena: two variants answer the same prompts (a generate job), a person judges
them blind, and each verdict becomes feedback rows and counts in a Wilson-interval result."""
