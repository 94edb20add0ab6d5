"""The web console's chat page as a platform."""
