"""The sign-off report's parts: provenance, accuracy and real-time figures, plots, and the markdown itself."""
