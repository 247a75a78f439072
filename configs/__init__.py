"""Experiment configs: ml-collections ``get_config(arg)`` files; ``base.py`` holds the defaults."""
