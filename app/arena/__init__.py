"""The review arena: two variants answer the same prompts (a generate job), a person judges them blind, each verdict becomes feedback and a Wilson-interval result."""
