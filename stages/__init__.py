"""DVC stage entry points: ``python -m stages.<name>``. Wiring only; the work is in recipe/."""
