"""The web demo (``python demo.py``): ``core`` holds the logic (no UI library), ``ui`` the Gradio page."""
