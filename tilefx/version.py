"""The tilefx version: ground floor, so an artifact can name it without importing the API."""

__version__ = "0.1.0"
