"""Adapters for frameworks (optional extras): ``pip install 'streamrag[langchain]'``."""
