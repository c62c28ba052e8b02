"""Feedback: rated answers (playground, arena, REST) stored in SQLite, turned into KTO datasets."""
